# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``qp2p._pure.retry``; see there for the documentation.

HMAC-SHA256 is the standard library's ``hashlib.sha256`` composed as RFC 2104 says: each key's
inner and outer states are hashed once, then copied for every token, so no key schedule is redone
per call and the module links no library of its own (a wheel bundles no OpenSSL).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

import hashlib

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


cdef extern from *:
    """
    #ifdef _WIN32
    #include <winsock2.h>
    #include <ws2tcpip.h>
    #else
    #include <arpa/inet.h>
    #include <sys/socket.h>
    #endif
    """
    int inet_pton(int af, const char* src, void* dst) nogil
    int AF_INET
    int AF_INET6

cdef enum:
    C_FORMAT = 1
    C_MAC_SIZE = 16
    C_MAX_CID = 20
    C_FIXED = 14          # format u8, key id u32, issued ms u64, address length u8
    C_MIN_TOKEN = C_FIXED + 4 + 2 + 1 + C_MAC_SIZE
    C_MAX_BODY = C_FIXED + 16 + 2 + 1 + C_MAX_CID
    C_FUTURE_SKEW_MS = 1000

cdef double MAX_NOW = 9007199254740.992  # 2**53 / 1000: milliseconds stay exact in a double


def key_id(key):
    return int.from_bytes(hashlib.sha256(b"qp2p retry key id\x00" + key).digest()[:4], "big")


cdef class _Hmac:
    """One HMAC-SHA256 key as its two keyed hashlib states (RFC 2104), copied for every token."""
    cdef object inner
    cdef object outer
    cdef readonly bytes key
    cdef readonly uint32_t ident

    def __cinit__(self, bytes key):
        padded = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self.key = key
        self.ident = key_id(key)

    cdef int mac(self, const uint8_t* body, size_t body_len, const uint8_t* extra, size_t extra_len,
                 uint8_t* out) except -1:
        cdef bytes message = PyBytes_FromStringAndSize(NULL, body_len + extra_len)
        cdef uint8_t* m = <uint8_t*>PyBytes_AS_STRING(message)
        memcpy(m, body, body_len)
        memcpy(m + body_len, extra, extra_len)
        h = self.inner.copy()
        h.update(message)
        inner_digest = h.digest()
        h = self.outer.copy()
        h.update(inner_digest)
        memcpy(out, PyBytes_AS_STRING(h.digest()), C_MAC_SIZE)
        return 0


cdef bint _same_mac(const uint8_t* a, const uint8_t* b) noexcept:
    """Compares two MACs in time independent of where they differ."""
    cdef volatile uint8_t diff = 0
    cdef Py_ssize_t i
    for i in range(C_MAC_SIZE):
        diff |= a[i] ^ b[i]
    return diff == 0


cdef int _pack_address(object addr, uint8_t* out) except -1:
    """Writes the address octets then the port; returns the octet count (4 or 16)."""
    host = addr[0].partition("%")[0]
    port = addr[1]
    cdef bytes text = host.encode("ascii", "replace")
    cdef int family = AF_INET6 if b":" in text else AF_INET
    if b"\0" in text or inet_pton(family, PyBytes_AS_STRING(text), out) != 1:
        raise ValueError(f"not an IP address: {host!r}")
    if port < 0 or port > 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    cdef int size = 16 if family == AF_INET6 else 4
    out[size] = (<unsigned int>port >> 8) & 0xFF
    out[size + 1] = <unsigned int>port & 0xFF
    return size


cdef uint64_t _millis(double now) except? 0xFFFFFFFFFFFFFFFF:
    if not (0.0 <= now <= MAX_NOW):
        raise ValueError(f"time out of range: {now!r}")
    return <uint64_t>(now * 1000.0)


cdef bytes _check_key(object key):
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"retry keys need at least {MIN_KEY_SIZE} bytes, got {len(key)}")
    return bytes(key)


cdef class RetryTokens:
    cdef _Hmac _current
    cdef _Hmac _previous
    cdef uint64_t _lifetime_ms

    def __init__(self, key, previous_key=None, lifetime=10.0):
        if not 0.0 < lifetime <= 86400.0:
            raise ValueError(f"lifetime must be in (0, 86400] seconds, got {lifetime!r}")
        self._lifetime_ms = <uint64_t>(<double>lifetime * 1000.0)
        self._current = _Hmac(_check_key(key))
        self._previous = None
        if previous_key is not None:
            self._previous = _Hmac(_check_key(previous_key))

    @property
    def lifetime(self):
        return self._lifetime_ms / 1000.0

    def rotate(self, key):
        cdef _Hmac new_key = _Hmac(_check_key(key))
        self._previous = self._current
        self._current = new_key

    def mint(self, addr, bytes original_dcid, double now, bytes retry_scid=b""):
        cdef uint8_t body[C_MAX_BODY]
        cdef Py_ssize_t cid_len = PyBytes_GET_SIZE(original_dcid)
        cdef int addr_len = _pack_address(addr, body + C_FIXED)
        cdef uint64_t issued
        cdef uint32_t ident = self._current.ident
        cdef Py_ssize_t pos, i
        if cid_len > C_MAX_CID:
            raise ValueError(f"connection id longer than {MAX_CID_LENGTH} bytes")
        issued = _millis(now)
        body[0] = C_FORMAT
        for i in range(4):
            body[1 + i] = (ident >> (24 - 8 * i)) & 0xFF
        for i in range(8):
            body[5 + i] = (issued >> (56 - 8 * i)) & 0xFF
        body[13] = addr_len
        pos = C_FIXED + addr_len + 2
        body[pos] = cid_len
        memcpy(body + pos + 1, PyBytes_AS_STRING(original_dcid), cid_len)
        pos += 1 + cid_len
        token = PyBytes_FromStringAndSize(NULL, pos + C_MAC_SIZE)
        cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(token)
        memcpy(out, body, pos)
        self._current.mac(body, pos, <const uint8_t*>PyBytes_AS_STRING(retry_scid),
                          PyBytes_GET_SIZE(retry_scid), out + pos)
        return token

    def validate(self, bytes token, addr, double now, bytes retry_scid=b""):
        cdef uint8_t packed[18]
        cdef uint8_t mac[C_MAC_SIZE]
        cdef int packed_len = _pack_address(addr, packed)
        cdef uint64_t now_ms = _millis(now)
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(token)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(token)
        cdef Py_ssize_t cid_at, mac_at, i
        cdef unsigned int fmt, addr_len, cid_len
        cdef uint32_t kid = 0
        cdef uint64_t issued = 0
        cdef _Hmac key
        if size < C_MIN_TOKEN:
            raise TokenLengthError(f"token of {size} bytes is shorter than any valid token")
        fmt = p[0]
        for i in range(4):
            kid = (kid << 8) | p[1 + i]
        for i in range(8):
            issued = (issued << 8) | p[5 + i]
        addr_len = p[13]
        if fmt != C_FORMAT:
            raise TokenForged(f"unknown token format {fmt}")
        cid_at = C_FIXED + addr_len + 2
        if (addr_len != 4 and addr_len != 16) or size < cid_at + 1 + C_MAC_SIZE:
            raise TokenLengthError(f"token of {size} bytes does not match its layout")
        cid_len = p[cid_at]
        mac_at = cid_at + 1 + cid_len
        if cid_len > C_MAX_CID or size != mac_at + C_MAC_SIZE:
            raise TokenLengthError(f"token of {size} bytes does not match its layout")
        if kid == self._current.ident:
            key = self._current
        elif self._previous is not None and kid == self._previous.ident:
            key = self._previous
        else:
            raise TokenUnknownKey(f"token key {kid:08x} is neither the current nor the previous key")
        key.mac(p, mac_at, <const uint8_t*>PyBytes_AS_STRING(retry_scid), PyBytes_GET_SIZE(retry_scid), mac)
        if not _same_mac(mac, p + mac_at):
            raise TokenForged("token MAC does not verify")
        if <int>addr_len != packed_len or memcmp(p + C_FIXED, packed, packed_len + 2) != 0:
            raise TokenAddressMismatch("token was issued to another address")
        if (now_ms > issued and now_ms - issued > self._lifetime_ms) or (
                issued > now_ms and issued - now_ms > C_FUTURE_SKEW_MS):
            raise TokenExpired(
                f"token issued {<object>now_ms - <object>issued} ms ago, "
                f"lifetime {self._lifetime_ms} ms"
            )
        return PyBytes_FromStringAndSize(<const char*>p + cid_at + 1, cid_len)
