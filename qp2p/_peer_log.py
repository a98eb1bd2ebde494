"""Log records about one peer: each carries ``peer_id`` and ``peer_addr`` attributes, and its
message starts with both, so that a formatter, a filter or a reader can tell whose it is.

Each module logs through its own ``logging.getLogger(__name__)``; ``peer_log`` wraps that
logger for one peer, so records keep the module's logger name and the caller's line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ("PeerLog", "peer_log")

# How many hex digits of a peer id a message shows (the record's ``peer_id`` has all 64).
SHOWN_ID = 16


class PeerLog(logging.LoggerAdapter[logging.Logger]):
    """A module's logger, for records about one peer (``peer_log`` makes one)."""

    def __init__(self, logger: logging.Logger, peer_id: str | None, peer_addr: str) -> None:
        super().__init__(logger, {"peer_id": peer_id, "peer_addr": peer_addr})
        self._prefix = f"peer {peer_id[:SHOWN_ID] if peer_id else '?'} at {peer_addr}: "

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``Logger.log``, the message prefixed, the attributes added, the caller's line kept."""
        if not self.isEnabledFor(level):
            return
        prefix = self._prefix
        if args:  # the message is %-formatted: an IPv6 zone's "%" in the prefix must not be
            prefix = prefix.replace("%", "%%")
        extra: Mapping[str, object] = {**(kwargs.pop("extra", None) or {}), **(self.extra or {})}
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # past this frame, to the caller's
        self.logger.log(level, f"{prefix}{msg}", *args, extra=extra, **kwargs)


def peer_log(logger: logging.Logger, peer_id: str | None, addr: tuple[str, int]) -> PeerLog:
    """``logger`` for records about the peer proven to be ``peer_id`` (None before its
    handshake proved it) at ``addr``, the address its packets come from."""
    host, port = addr
    return PeerLog(logger, peer_id, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
