"""Fuzz target: ``RetryTokens.validate`` on a token, for a valid client address.

Input: three parameter bytes, then the retry source connection id, then the token.

- byte 0: the client address (low bits, from ``ADDRESSES``); bit 7 set means "sign it": the last
  16 bytes of the token are replaced by its genuine MAC, so the checks behind the MAC (address,
  age) are reached too;
- byte 1: the validation time, in tenths of a second around ``NOW`` (-12.8 s to +12.7 s);
- byte 2: the retry source connection id's length (mod 21).

Only ``TokenError`` may escape (addresses and times are valid, so ``ValueError`` may not); a token
that validates must be exactly the one ``mint`` makes from what it holds.

    python fuzz/retry_token.py [--backend=fast|pure] [libFuzzer flags] [corpus dir]
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterator
from typing import Any

from _harness import PURE, Backend, attempt, errors, main, split

KEY = bytes(range(32))
PREVIOUS_KEY = bytes(range(100, 132))
NOW = 1_700_000_000.25
ADDRESSES = (
    ("192.0.2.10", 4433),
    ("10.0.0.1", 0),
    ("2001:db8::1", 65535),
    ("::ffff:192.0.2.10", 4433),
    ("fe80::1%1", 9),
)
SIGN = 0x80
MAC_SIZE = 16
MAX_CID_LENGTH = 20
_tokens: dict[str, Any] = {}


def tokens(backend: Backend) -> Any:
    """The backend's ``RetryTokens`` under ``KEY``, still accepting ``PREVIOUS_KEY``."""
    if backend.name not in _tokens:
        _tokens[backend.name] = backend.retry.RetryTokens(KEY, PREVIOUS_KEY)
    return _tokens[backend.name]


def key_for(backend: Backend, token: bytes) -> bytes:
    """The key the token names (the current one when it names neither)."""
    return PREVIOUS_KEY if token[1:5] == backend.retry.key_id(PREVIOUS_KEY).to_bytes(4, "big") else KEY


def signed(backend: Backend, token: bytes, rscid: bytes) -> bytes:
    """``token`` with its last 16 bytes replaced by the MAC it should carry."""
    body = token[:-MAC_SIZE] if len(token) >= MAC_SIZE else token
    return body + hmac.digest(key_for(backend, body), body + rscid, hashlib.sha256)[:MAC_SIZE]


def seconds(millis: int) -> float:
    """A time ``t`` with ``int(t * 1000) == millis``, as ``mint`` reads its clock."""
    at = millis / 1000.0
    for _ in range(4):  # float rounding is off by at most a few units in the last place
        if int(at * 1000.0) >= millis:
            break
        at = math.nextafter(at, math.inf)
    return at


def check(backend: Backend, data: bytes) -> list[Any]:
    params, rest = split(data, 3)
    addr = ADDRESSES[(params[0] & ~SIGN) % len(ADDRESSES)]
    now = NOW + (params[1] - 128) / 10
    rscid, token = rest[: params[2] % (MAX_CID_LENGTH + 1)], rest[params[2] % (MAX_CID_LENGTH + 1) :]
    if params[0] & SIGN:
        token = signed(backend, token, rscid)
    step = attempt(lambda: tokens(backend).validate(token, addr, now, rscid), errors.TokenError)
    if step[0] == "ok":
        issued = int.from_bytes(token[5:13], "big")
        minter = backend.retry.RetryTokens(key_for(backend, token))
        assert minter.mint(addr, step[1], seconds(issued), rscid) == token
    return [step]


def seeds() -> Iterator[bytes]:
    """Tokens minted for each address, with connection ids of 0, 8 and 20 bytes and retry source
    ids of 0 and 8 bytes, at ``NOW`` and under each key; the same unsigned, for the "sign" bit."""
    for index, addr in enumerate(ADDRESSES):
        for key in (KEY, PREVIOUS_KEY):
            for odcid in (b"", bytes(range(8)), bytes(range(20))):
                for rscid in (b"", b"\xf0" * 8):
                    token = PURE.retry.RetryTokens(key).mint(addr, odcid, NOW, rscid)
                    yield bytes((index, 128, len(rscid))) + rscid + token
                    yield bytes((index | SIGN, 128, len(rscid))) + rscid + token[:-MAC_SIZE] + bytes(MAC_SIZE)


if __name__ == "__main__":
    main(check)
