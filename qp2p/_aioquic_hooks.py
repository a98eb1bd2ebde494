"""The private aioquic internals qp2p reads, all in one place.

aioquic has no public way to ask how much written data is still unacknowledged, which a
graceful close needs (a CONNECTION_CLOSE abandons whatever is still in flight). The version is
pinned to 1.7.x in pyproject.toml and tests/test_aioquic_hooks.py fails if an upgrade moves
any attribute used here.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection

__all__ = ("unacked_bytes",)


def unacked_bytes(quic: QuicConnection) -> int:
    """Bytes written to streams and not yet acknowledged (an unacknowledged FIN counts as one);
    streams that were reset count for nothing, since nothing of them will be delivered."""
    total = 0
    for stream in quic._streams.values():
        sender = stream.sender
        if sender._reset_error_code is None:
            total += sender._buffer_stop - sender._buffer_start
            if sender._buffer_fin is not None and not sender._acked_fin:
                total += 1
    return total
