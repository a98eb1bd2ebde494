"""qp2p: peer-to-peer messaging over QUIC for asyncio.

``USING_EXTENSIONS`` tells whether the compiled hot path (``_qp2p_fast``) is loaded or the
pure-Python twin (forced with ``QP2P_NO_EXTENSIONS=1``).
"""

from qp2p._speedups import BACKEND
from qp2p._version import __version__
from qp2p.config import Config, Role, Trust
from qp2p.connection import Connection, Message, Traffic
from qp2p.endpoint import Endpoint, EndpointStats
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
    MemoryRefused,
    MessageTooLarge,
    MissingDependency,
    ReachabilityError,
    RecvError,
    RequestTimeout,
    SendError,
    SendTimeout,
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
from qp2p.nat.behaviour import Mapping, NatBehaviour

USING_EXTENSIONS: bool = BACKEND == "fast"

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
    "Mapping",
    "MemoryRefused",
    "Message",
    "MessageTooLarge",
    "MissingDependency",
    "NatBehaviour",
    "ReachabilityError",
    "RecvError",
    "RequestTimeout",
    "Role",
    "SendError",
    "SendTimeout",
    "TokenAddressMismatch",
    "TokenError",
    "TokenExpired",
    "TokenForged",
    "TokenLengthError",
    "TokenUnknownKey",
    "Traffic",
    "TruncatedFrame",
    "TruncatedMessage",
    "Trust",
    "UnknownFlag",
    "UnknownTag",
    "UnsupportedVersion",
    "__version__",
)
