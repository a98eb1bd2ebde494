"""qp2p: peer-to-peer messaging over QUIC for asyncio.

``USING_EXTENSIONS`` tells whether the compiled hot path (``_qp2p_fast``) is loaded or the
pure-Python twin (forced with ``QP2P_NO_EXTENSIONS=1``).

The asyncio layers (``Endpoint``, ``Connection``, ``Message``) load on first use: the compiled
modules import ``qp2p.errors``, which runs this file, so it must not need them while one of
them is still being initialised.
"""

from typing import TYPE_CHECKING, Any

from qp2p._speedups import BACKEND
from qp2p._version import __version__
from qp2p.config import Config, Role, Trust
from qp2p.errors import (
    BootstrapError,
    CertificateError,
    ClosedError,
    ConfigError,
    ConnectionError,
    ConnectionLost,
    DecodeError,
    EmptyMessage,
    Error,
    FrameTooLarge,
    MalformedMessage,
    MalformedPacket,
    MessageTooLarge,
    ReachabilityError,
    RecvError,
    RequestTimeout,
    SendError,
    TokenAddressMismatch,
    TokenError,
    TokenExpired,
    TokenForged,
    TokenLengthError,
    TokenUnknownKey,
    TruncatedFrame,
    TruncatedMessage,
    UnknownFlag,
    UnknownTag,
    UnsupportedVersion,
)

if TYPE_CHECKING:
    from qp2p.connection import Connection, Message
    from qp2p.endpoint import Endpoint, EndpointStats

USING_EXTENSIONS: bool = BACKEND == "fast"

_LAZY = {
    "Connection": "qp2p.connection",
    "Message": "qp2p.connection",
    "Endpoint": "qp2p.endpoint",
    "EndpointStats": "qp2p.endpoint",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qp2p' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = (
    "BACKEND",
    "USING_EXTENSIONS",
    "BootstrapError",
    "CertificateError",
    "ClosedError",
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionError",
    "ConnectionLost",
    "DecodeError",
    "EmptyMessage",
    "Endpoint",
    "EndpointStats",
    "Error",
    "FrameTooLarge",
    "MalformedMessage",
    "MalformedPacket",
    "Message",
    "MessageTooLarge",
    "ReachabilityError",
    "RecvError",
    "RequestTimeout",
    "Role",
    "SendError",
    "TokenAddressMismatch",
    "TokenError",
    "TokenExpired",
    "TokenForged",
    "TokenLengthError",
    "TokenUnknownKey",
    "TruncatedFrame",
    "TruncatedMessage",
    "Trust",
    "UnknownFlag",
    "UnknownTag",
    "UnsupportedVersion",
    "__version__",
)
