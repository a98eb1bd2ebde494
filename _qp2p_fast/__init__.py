"""Compiled (Cython) twins of ``qp2p._pure``; import them through ``qp2p._speedups`` only.

The compiled modules import ``qp2p.errors``, which runs ``qp2p/__init__``, whose backend choice
imports the compiled modules. So ``qp2p`` is initialised here, before any of them runs: whichever
is imported first, ``qp2p._speedups`` imports all four whole and chooses the compiled backend.
"""

import qp2p  # noqa: F401  (initialises qp2p and its backend choice first, see above)
