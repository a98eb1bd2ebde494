"""Stateless-retry tokens: round trips, every refusal with its own error, rotation, on both backends."""

from __future__ import annotations

import hashlib
import hmac
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qp2p import errors

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
ADDR = ("192.0.2.10", 4433)
ODCID = bytes.fromhex("8394c8f03e515708")
RSCID = bytes.fromhex("f067a5502a4262b5")
NOW = 1_700_000_000.25


@pytest.fixture
def tokens(retry: ModuleType) -> object:
    return retry.RetryTokens(KEY, lifetime=10.0)


def test_round_trip_ipv4_and_ipv6(retry: ModuleType, tokens: object) -> None:
    for addr in [ADDR, ("2001:db8::1", 443), ("::ffff:192.0.2.1", 1), ("127.0.0.1", 65535)]:
        for odcid in [b"", ODCID, bytes(20)]:
            token = tokens.mint(addr, odcid, NOW, RSCID)
            assert tokens.validate(token, addr, NOW + 1, RSCID) == odcid


def test_scope_id_is_not_part_of_the_address(tokens: object) -> None:
    token = tokens.mint(("fe80::1%eth0", 9), ODCID, NOW)
    assert tokens.validate(token, ("fe80::1%lo", 9), NOW) == ODCID


def test_layout_and_mac_are_as_documented(retry: ModuleType, tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW, RSCID)
    body = (
        bytes([1])
        + retry.key_id(KEY).to_bytes(4, "big")
        + int(NOW * 1000).to_bytes(8, "big")
        + bytes([4, 192, 0, 2, 10])
        + (4433).to_bytes(2, "big")
        + bytes([len(ODCID)])
        + ODCID
    )
    # The MAC is the standard library's HMAC-SHA256, truncated: the two backends agree with it.
    assert token == body + hmac.digest(KEY, body + RSCID, "sha256")[:16]
    assert retry.key_id(KEY) == int.from_bytes(
        hashlib.sha256(b"qp2p retry key id\0" + KEY).digest()[:4], "big"
    )


def test_another_address_is_refused(tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW)
    for addr in [
        ("192.0.2.11", 4433),
        ("192.0.2.10", 4434),
        ("::ffff:192.0.2.10", 4433),
        ("2001:db8::1", 4433),
    ]:
        with pytest.raises(errors.TokenAddressMismatch):
            tokens.validate(token, addr, NOW)


def test_expiry(tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW)
    assert tokens.validate(token, ADDR, NOW + 10.0) == ODCID
    with pytest.raises(errors.TokenExpired):
        tokens.validate(token, ADDR, NOW + 10.002)
    assert tokens.validate(token, ADDR, NOW - 0.9) == ODCID  # a little clock skew is tolerated
    with pytest.raises(errors.TokenExpired):
        tokens.validate(token, ADDR, NOW - 1.1)


def test_retry_source_cid_is_bound(tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW, RSCID)
    with pytest.raises(errors.TokenForged):
        tokens.validate(token, ADDR, NOW, RSCID[:-1] + b"\0")
    with pytest.raises(errors.TokenForged):
        tokens.validate(token, ADDR, NOW)


def test_every_single_bit_flip_is_refused(tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW, RSCID)
    kinds = set()
    for i in range(len(token) * 8):
        flipped = bytearray(token)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(errors.TokenError) as info:
            tokens.validate(bytes(flipped), ADDR, NOW, RSCID)
        kinds.add(type(info.value))
    assert kinds == {errors.TokenForged, errors.TokenUnknownKey, errors.TokenLengthError}


def test_every_truncation_and_extension_is_refused(tokens: object) -> None:
    token = tokens.mint(ADDR, ODCID, NOW)
    for size in range(len(token)):
        with pytest.raises((errors.TokenLengthError, errors.TokenForged)):
            tokens.validate(token[:size], ADDR, NOW)
    for size in range(36):
        with pytest.raises(errors.TokenLengthError):
            tokens.validate(token[:size], ADDR, NOW)
    with pytest.raises(errors.TokenLengthError):
        tokens.validate(token + b"\0", ADDR, NOW)


def test_tokens_of_another_key_are_unknown(retry: ModuleType, tokens: object) -> None:
    foreign = retry.RetryTokens(OTHER_KEY).mint(ADDR, ODCID, NOW)
    with pytest.raises(errors.TokenUnknownKey):
        tokens.validate(foreign, ADDR, NOW)


def test_rotation_keeps_exactly_one_previous_key(retry: ModuleType) -> None:
    tokens = retry.RetryTokens(KEY)
    old = tokens.mint(ADDR, ODCID, NOW)
    tokens.rotate(OTHER_KEY)
    assert tokens.validate(old, ADDR, NOW) == ODCID
    new = tokens.mint(ADDR, ODCID, NOW)
    assert new != old and tokens.validate(new, ADDR, NOW) == ODCID
    tokens.rotate(bytes(32))
    with pytest.raises(errors.TokenUnknownKey):
        tokens.validate(old, ADDR, NOW)
    assert tokens.validate(new, ADDR, NOW) == ODCID


def test_previous_key_given_at_construction(retry: ModuleType) -> None:
    old = retry.RetryTokens(OTHER_KEY).mint(ADDR, ODCID, NOW)
    assert retry.RetryTokens(KEY, previous_key=OTHER_KEY).validate(old, ADDR, NOW) == ODCID


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.RetryTokens(b"short"),
        lambda r: r.RetryTokens(KEY, previous_key=b"short"),
        lambda r: r.RetryTokens(KEY, lifetime=0),
        lambda r: r.RetryTokens(KEY, lifetime=float("nan")),
        lambda r: r.RetryTokens(KEY).rotate(b""),
        lambda r: r.RetryTokens(KEY).mint(ADDR, bytes(21), NOW),
        lambda r: r.RetryTokens(KEY).mint(("example.org", 1), ODCID, NOW),
        lambda r: r.RetryTokens(KEY).mint(("1.2.3.4\0", 1), ODCID, NOW),
        lambda r: r.RetryTokens(KEY).mint(("1.2.3.4", 65536), ODCID, NOW),
        lambda r: r.RetryTokens(KEY).mint(ADDR, ODCID, -1.0),
        lambda r: r.RetryTokens(KEY).mint(ADDR, ODCID, float("inf")),
        lambda r: r.RetryTokens(KEY).validate(b"x" * 45, ("nowhere", 1), NOW),
    ],
)
def test_local_misuse_is_value_error(retry: ModuleType, call: object) -> None:
    with pytest.raises(ValueError):
        call(retry)  # type: ignore[operator]


def test_lifetime_property(retry: ModuleType) -> None:
    assert retry.RetryTokens(KEY, lifetime=2.5).lifetime == 2.5


def test_token_errors_are_recv_errors() -> None:
    for cls in (
        errors.TokenForged,
        errors.TokenExpired,
        errors.TokenAddressMismatch,
        errors.TokenLengthError,
        errors.TokenUnknownKey,
    ):
        assert issubclass(cls, errors.TokenError) and issubclass(cls, errors.RecvError)


@given(
    host=st.ip_addresses().map(str),
    port=st.integers(0, 65535),
    odcid=st.binary(max_size=20),
    rscid=st.binary(max_size=20),
    now=st.floats(0, 2e10),
    age=st.floats(0, 9.99),
)
def test_any_genuine_fresh_token_validates(
    retry: ModuleType, host: str, port: int, odcid: bytes, rscid: bytes, now: float, age: float
) -> None:
    tokens = retry.RetryTokens(KEY, lifetime=10.0)
    token = tokens.mint((host, port), odcid, now, rscid)
    assert tokens.validate(token, (host, port), now + age, rscid) == odcid


@given(junk=st.binary(max_size=120))
def test_random_tokens_are_refused(retry: ModuleType, junk: bytes) -> None:
    with pytest.raises(errors.TokenError):
        retry.RetryTokens(KEY).validate(junk, ADDR, NOW)
