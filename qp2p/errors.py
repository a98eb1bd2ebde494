"""Every exception qp2p raises, in one leaf module that both backends import.

Two axes, as in h11 and trio: ``SendError`` means we (or our caller) asked for something
impossible, ``RecvError`` means a peer sent something illegal; and "we closed it" stays
distinguishable from "the peer or the network broke it".
"""

from __future__ import annotations

import builtins

__all__ = (
    "BootstrapError",
    "CertificateError",
    "ClosedError",
    "ConfigError",
    "ConnectionError",
    "ConnectionLost",
    "DecodeError",
    "EmptyMessage",
    "Error",
    "FrameTooLarge",
    "MalformedMessage",
    "MalformedPacket",
    "MemoryRefused",
    "MessageTooLarge",
    "MissingDependency",
    "ReachabilityError",
    "RecvError",
    "RequestTimeout",
    "SendError",
    "SendTimeout",
    "TokenAddressMismatch",
    "TokenError",
    "TokenExpired",
    "TokenForged",
    "TokenLengthError",
    "TokenUnknownKey",
    "TruncatedFrame",
    "TruncatedMessage",
    "UnknownFlag",
    "UnknownTag",
    "UnsupportedVersion",
)


class Error(Exception):
    """Base class of every error qp2p raises."""


class ConfigError(Error, builtins.ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class ClosedError(Error):
    """The endpoint or connection was closed by us; the operation cannot run on it any more."""


class ConnectionError(Error):
    """A connection could not be made, or broke; the cause, if any, is in ``__cause__``.

    Inside qp2p write ``errors.ConnectionError``: the name shadows the builtin.
    """


class ConnectionLost(ConnectionError):
    """An established connection ended by the peer's doing or the network's (closed, reset, timed out)."""


class BootstrapError(ConnectionError):
    """No contact and no cached peer could be reached; ``attempts`` says what each one got."""

    def __init__(self, message: str, attempts: dict[tuple[str, int], str] | None = None) -> None:
        super().__init__(message)
        self.attempts = dict(attempts or {})

    def __reduce__(self) -> tuple[type[BootstrapError], tuple[str, dict[tuple[str, int], str]]]:
        return (type(self), (str(self), self.attempts))


class MissingDependency(Error, builtins.ImportError):
    """An optional feature needs a package that is not installed; the message names the
    extra that brings it (``pip install 'qp2p[metrics]'``)."""


class ReachabilityError(Error):
    """We asked to run as a node, but the network cannot reach us at our public address."""


class CertificateError(Error):
    """A certificate could not be loaded, or a peer's certificate was refused."""


class RequestTimeout(Error, builtins.TimeoutError):
    """No response to a request arrived in time."""


class SendError(Error):
    """A message could not be sent; includes misuse on our side (bad flag, empty message)."""


class SendTimeout(SendError, builtins.TimeoutError):
    """The peer let ``send_timeout`` seconds pass without granting the credit a send waited for."""


class RecvError(Error):
    """Something received from a peer was unusable."""


class DecodeError(RecvError):
    """A peer sent bytes that break the wire format; the stream carrying them is unusable."""


class _SizeLimit(Exception):
    """Mixin for errors about a length above a limit; carries both numbers."""

    def __init__(self, limit: int, size: int) -> None:
        super().__init__(f"{size} bytes exceed the limit of {limit} bytes")
        self.limit = limit
        self.size = size

    def __reduce__(self) -> tuple[type[_SizeLimit], tuple[int, int]]:
        return (type(self), (self.limit, self.size))


class MessageTooLarge(_SizeLimit, SendError):
    """A message to send is longer than the limit (ours, the peer's, or the wire format's)."""


class FrameTooLarge(_SizeLimit, DecodeError):
    """A frame header declares more data than we accept; refused before anything is allocated."""


class UnsupportedVersion(DecodeError):
    """A frame header carries a wire-format version other than 1."""


class UnknownFlag(DecodeError):
    """A frame header carries a flag this version does not define."""


class EmptyMessage(DecodeError):
    """A user-message frame with no data; the format forbids it."""


class TruncatedFrame(DecodeError):
    """The data ended inside a frame: a short header, or a stream that stopped mid-body."""


class TruncatedMessage(DecodeError):
    """A frame body shorter than the fields its message type requires."""


class UnknownTag(DecodeError):
    """A control message carries a tag this version does not define."""


class MalformedMessage(DecodeError):
    """A frame body whose fields do not parse: short fields, bad values, or bytes left over."""


class MemoryRefused(RecvError):
    """We refused a peer's message because its memory scope, or the endpoint's, is full."""


class MalformedPacket(DecodeError):
    """A datagram that is not a QUIC packet we can route (empty, truncated, bad lengths)."""


class TokenError(RecvError):
    """A stateless-retry token was refused; the client must start over without it."""


class TokenLengthError(TokenError):
    """The token's length does not match its layout."""


class TokenUnknownKey(TokenError):
    """The token was minted under a key that is neither the current nor the previous one."""


class TokenForged(TokenError):
    """The token's MAC does not verify: forged, tampered with, or of another format."""


class TokenAddressMismatch(TokenError):
    """The token is genuine but was issued to another client address."""


class TokenExpired(TokenError):
    """The token is genuine but older than its lifetime (or dated in the future)."""
