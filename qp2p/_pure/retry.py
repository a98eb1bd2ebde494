"""Stateless-retry address-validation tokens (RFC 9000, section 8.1.2), HMAC-SHA256 under rotating keys.

Layout (big-endian): ``format u8 (=1) | key id u32 | issued ms u64 | address length u8 (4 or 16) |
address | port u16 | odcid length u8 (<= 20) | odcid | MAC (16 bytes)``. The MAC is the first
16 bytes of HMAC-SHA256(key, everything before it || retry source connection id). The token is
authenticated, not encrypted: it shows the client its own address and nothing else secret.
Keys and the clock are passed in, so this module does no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from socket import AF_INET, AF_INET6, inet_pton

from qp2p.errors import (
    TokenAddressMismatch,
    TokenExpired,
    TokenForged,
    TokenLengthError,
    TokenUnknownKey,
)

__all__ = ("MAC_SIZE", "MAX_CID_LENGTH", "MIN_KEY_SIZE", "TOKEN_FORMAT", "RetryTokens", "key_id")

TOKEN_FORMAT = 1
MAC_SIZE = 16
MAX_CID_LENGTH = 20
MIN_KEY_SIZE = 16
# Tokens dated further ahead than this (clock steps, keys shared between hosts) are refused.
_FUTURE_SKEW_MS = 1000
# Milliseconds stay exact in a double up to 2**53.
_MAX_NOW = 2**53 / 1000

_FIXED = struct.Struct(">BIQB")
_PORT = struct.Struct(">H")
_MIN_TOKEN = _FIXED.size + 4 + _PORT.size + 1 + MAC_SIZE


def key_id(key: bytes) -> int:
    """The 32-bit identifier a token carries for ``key``: a hash prefix, never the key itself."""
    return int.from_bytes(hashlib.sha256(b"qp2p retry key id\x00" + key).digest()[:4], "big")


def _pack_address(addr: tuple[str, int]) -> bytes:
    host, port = addr[0], addr[1]
    host = host.partition("%")[0]
    try:
        packed = inet_pton(AF_INET6 if ":" in host else AF_INET, host)
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {host!r}") from None
    if port < 0 or port > 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return packed + _PORT.pack(port)


def _millis(now: float) -> int:
    if not 0.0 <= now <= _MAX_NOW:
        raise ValueError(f"time out of range: {now!r}")
    return int(now * 1000.0)


def _check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"retry keys need at least {MIN_KEY_SIZE} bytes, got {len(key)}")
    return bytes(key)


class RetryTokens:
    """Mints and validates tokens under a current key, still accepting the previous one.

    ``lifetime`` is in seconds; ``now`` arguments are seconds since the epoch (``time.time()``).
    """

    __slots__ = ("_current", "_current_id", "_lifetime_ms", "_previous", "_previous_id")

    def __init__(self, key: bytes, previous_key: bytes | None = None, lifetime: float = 10.0) -> None:
        if not 0.0 < lifetime <= 86400.0:
            raise ValueError(f"lifetime must be in (0, 86400] seconds, got {lifetime!r}")
        self._lifetime_ms = int(lifetime * 1000.0)
        self._current = _check_key(key)
        self._current_id = key_id(self._current)
        self._previous: bytes | None = None
        self._previous_id = -1
        if previous_key is not None:
            self._previous = _check_key(previous_key)
            self._previous_id = key_id(self._previous)

    @property
    def lifetime(self) -> float:
        """Seconds a token stays valid."""
        return self._lifetime_ms / 1000.0

    def rotate(self, key: bytes) -> None:
        """Make ``key`` current; the current key becomes the previous one, the previous is dropped."""
        new_key = _check_key(key)
        self._previous, self._previous_id = self._current, self._current_id
        self._current, self._current_id = new_key, key_id(new_key)

    def mint(self, addr: tuple[str, int], original_dcid: bytes, now: float, retry_scid: bytes = b"") -> bytes:
        """A token binding the client address, its original destination CID and the time."""
        packed = _pack_address(addr)
        if len(original_dcid) > MAX_CID_LENGTH:
            raise ValueError(f"connection id longer than {MAX_CID_LENGTH} bytes")
        body = (
            _FIXED.pack(TOKEN_FORMAT, self._current_id, _millis(now), len(packed) - 2)
            + packed
            + bytes((len(original_dcid),))
            + original_dcid
        )
        return body + hmac.digest(self._current, body + retry_scid, "sha256")[:MAC_SIZE]

    def validate(self, token: bytes, addr: tuple[str, int], now: float, retry_scid: bytes = b"") -> bytes:
        """The original destination CID inside a genuine, fresh token issued to ``addr``."""
        packed = _pack_address(addr)
        now_ms = _millis(now)
        size = len(token)
        if size < _MIN_TOKEN:
            raise TokenLengthError(f"token of {size} bytes is shorter than any valid token")
        fmt, kid, issued, addr_len = _FIXED.unpack_from(token)
        if fmt != TOKEN_FORMAT:
            raise TokenForged(f"unknown token format {fmt}")
        cid_at = _FIXED.size + addr_len + 2
        if (addr_len != 4 and addr_len != 16) or size < cid_at + 1 + MAC_SIZE:
            raise TokenLengthError(f"token of {size} bytes does not match its layout")
        cid_len = token[cid_at]
        mac_at = cid_at + 1 + cid_len
        if cid_len > MAX_CID_LENGTH or size != mac_at + MAC_SIZE:
            raise TokenLengthError(f"token of {size} bytes does not match its layout")
        if kid == self._current_id:
            key = self._current
        elif kid == self._previous_id and self._previous is not None:
            key = self._previous
        else:
            raise TokenUnknownKey(f"token key {kid:08x} is neither the current nor the previous key")
        mac = hmac.digest(key, token[:mac_at] + retry_scid, "sha256")[:MAC_SIZE]
        if not hmac.compare_digest(mac, token[mac_at:]):
            raise TokenForged("token MAC does not verify")
        if token[_FIXED.size : cid_at] != packed:
            raise TokenAddressMismatch("token was issued to another address")
        if now_ms - issued > self._lifetime_ms or issued - now_ms > _FUTURE_SKEW_MS:
            raise TokenExpired(f"token issued {now_ms - issued} ms ago, lifetime {self._lifetime_ms} ms")
        return bytes(token[cid_at + 1 : mac_at])
