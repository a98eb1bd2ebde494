"""``python -m qp2p``: the same command line as the ``qp2p`` script."""

from qp2p.cli import main

raise SystemExit(main())
