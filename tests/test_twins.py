"""The compiled and pure backends are twins: same names, signatures, results and errors.

The differential tests feed both the same input, valid or not, and demand the same result or
the same exception class with the same message.
"""

from __future__ import annotations

import hmac
import inspect
import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_packet import long_header

from qp2p import errors

pytestmark = pytest.mark.fast_ext

MODULES = ("framing", "chunking", "retry", "packet")


def twins(name: str) -> tuple[ModuleType, ModuleType]:
    import importlib

    return importlib.import_module(f"_qp2p_fast.{name}"), importlib.import_module(f"qp2p._pure.{name}")


def bare(signature: inspect.Signature) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=inspect.Signature.empty))


def constructor_signature(cls: type) -> str:
    try:
        return bare(inspect.signature(cls))
    except ValueError:  # a compiled class: Cython embeds "Name(params)" as the docstring's first line
        first_line = (cls.__doc__ or "").splitlines()[0]
        return first_line[len(cls.__name__) :]


def public_names(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")} | {
        n
        for n in ("__iter__", "__next__", "__eq__", "__hash__")
        if getattr(cls, n, None) not in (None, object.__dict__.get(n))
    }


@pytest.mark.parametrize("name", MODULES)
def test_same_names_constants_and_signatures(name: str) -> None:
    fast, pure = twins(name)
    assert tuple(fast.__all__) == tuple(pure.__all__)
    for attr in pure.__all__:
        f, p = getattr(fast, attr), getattr(pure, attr)
        if isinstance(p, int):
            assert f == p, attr
        elif isinstance(p, type):
            assert constructor_signature(f) == constructor_signature(p), attr
            assert public_names(f) == public_names(p), attr
            for method in public_names(p) - {"__iter__", "__next__", "__eq__", "__hash__"}:
                if callable(getattr(p, method)) and not isinstance(getattr(p, method), type):
                    assert bare(inspect.signature(getattr(f, method))) == bare(
                        inspect.signature(getattr(p, method))
                    ), f"{attr}.{method}"
        else:
            assert bare(inspect.signature(f)) == bare(inspect.signature(p)), attr


def normalise(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(normalise(v) for v in value)
    if isinstance(value, memoryview | bytearray):
        return ("buffer", bytes(value))
    if hasattr(value, "destination_cid"):
        return (
            "header",
            value.is_long_header,
            value.version,
            value.packet_type,
            value.destination_cid,
            value.source_cid,
            value.token,
        )
    return value


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", normalise(call()))
    except Exception as exc:  # the class and message are what is compared
        return ("error", type(exc), str(exc))


def assert_same(make: Callable[[ModuleType], Any], name: str) -> Any:
    fast, pure = twins(name)
    got_fast, got_pure = outcome(lambda: make(fast)), outcome(lambda: make(pure))
    assert got_fast == got_pure
    if got_fast[0] == "error":
        assert got_fast[1].__module__ in ("qp2p.errors", "builtins")
    return got_fast


def test_error_classes_are_shared_objects() -> None:
    fast, _ = twins("framing")
    got = outcome(lambda: fast.decode_header(b"\x00\x02" + bytes(7), 10))
    assert got[1] is errors.UnsupportedVersion


# ---- framing -------------------------------------------------------------------------------


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at each of ``cuts`` (taken modulo its length), in order, covering it all."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[start:end] for start, end in zip(points, points[1:], strict=False)]


def damaged(seed: int, count: int, flips: list[tuple[int, int]]) -> bytes:
    """A valid stream of ``count`` frames with the bytes at ``flips`` overwritten."""
    stream = bytearray(valid_stream(seed, count))
    for at, value in flips:
        if stream:
            stream[at % len(stream)] = value
    return bytes(stream)


def decode_all(framing: ModuleType, stream: bytes, cuts: list[int], max_size: int) -> list[Any]:
    decoder = framing.FrameDecoder(max_size)
    events: list[Any] = []
    for piece in pieces(stream, cuts):
        decoder.feed(piece)
        events.append(outcome(lambda: list(decoder)))
        if events[-1][0] == "error":
            break
    events.append(outcome(decoder.finish))
    events.append(decoder.buffered)
    return events


def valid_stream(seed: int, count: int) -> bytes:
    from qp2p._pure.framing import encode_frame

    rng = random.Random(seed)
    return b"".join(encode_frame(rng.randrange(4), rng.randbytes(rng.randrange(1, 40))) for _ in range(count))


@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 12),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
    max_size=st.integers(0, 64),
)
def test_framing_decoder_agrees(
    seed: int, count: int, flips: list[tuple[int, int]], cuts: list[int], max_size: int
) -> None:
    stream = damaged(seed, count, flips)
    assert_same(lambda m: decode_all(m, stream, cuts, max_size), "framing")


@given(st.binary(max_size=20), st.integers(-5, 2**33))
def test_decode_header_agrees(data: bytes, max_size: int) -> None:
    assert_same(lambda m: m.decode_header(data, max_size), "framing")


@given(
    st.integers(-(2**70), 2**70) | st.integers(-3, 6),
    st.integers(-(2**70), 2**70) | st.integers(-3, 2**32 + 3),
)
def test_encode_header_agrees(flag: int, data_len: int) -> None:
    assert_same(lambda m: m.encode_header(flag, data_len), "framing")


@given(st.integers(-2, 6), st.binary(max_size=50))
def test_encode_frame_agrees(flag: int, body: bytes) -> None:
    assert_same(lambda m: m.encode_frame(flag, body), "framing")


def taken(framing: ModuleType, call: Callable[[], Any]) -> tuple[Any, ...]:
    """``outcome`` of one ``take``, with each FrameReceived as the tuple of its fields."""
    got = outcome(call)
    if got[0] != "ok":
        return got
    frames, spent, stop, odd = got[1]
    fields = [(f.flag, f.request_id, f.data, f.lane, f.cost, f.large, f.held) for f in frames]
    return ("ok", fields, spent, stop, odd)


def take_all(framing: ModuleType, stream: bytes, cuts: list[int], budgets: list[int]) -> list[Any]:
    """Hand ``stream`` to ``take`` in pieces, each with the next budget, as a lane does (what
    stopped early is taken again with nothing new)."""
    decoder = framing.FrameDecoder(64)
    events: list[Any] = []
    for index, piece in enumerate(pieces(stream, cuts)):
        budget = budgets[index % len(budgets)] if budgets else 1 << 40
        events.append(taken(framing, lambda: decoder.take(piece, index, budget, 73)))  # noqa: B023
        if events[-1][0] == "ok" and events[-1][3] != framing.TAKE_DONE:
            events.append(taken(framing, lambda: decoder.take(b"", index, 1 << 40, 73)))  # noqa: B023
        events.append(decoder.buffered)
    return events


@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 12),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
    budgets=st.lists(st.integers(-10, 2000), max_size=4),
)
def test_framing_take_agrees(
    seed: int, count: int, flips: list[tuple[int, int]], cuts: list[int], budgets: list[int]
) -> None:
    stream = damaged(seed, count, flips)
    assert_same(lambda m: take_all(m, stream, cuts, budgets), "framing")


@given(st.integers(-2, 6), st.binary(max_size=50), st.binary(max_size=20))
def test_append_frame_agrees(flag: int, body: bytes, before: bytes) -> None:
    def append(m: ModuleType) -> Any:
        out = bytearray(before)
        result = outcome(lambda: m.append_frame(out, flag, body))
        return result, bytes(out)

    assert_same(append, "framing")


# ---- chunking ------------------------------------------------------------------------------


@given(st.integers(-1, 5), st.binary(max_size=300), st.integers(-1, 70), st.binary(max_size=6))
def test_chunker_agrees(flag: int, payload: bytes, chunk_size: int, prefix: bytes) -> None:
    assert_same(
        lambda m: (lambda c: (c.total, list(c), c.remaining))(m.Chunker(flag, payload, chunk_size, prefix)),
        "chunking",
    )


def reassemble(chunking: ModuleType, data: bytes, cuts: list[int], max_size: int) -> list[Any]:
    reassembler = chunking.Reassembler(max_size)
    events: list[Any] = []
    for piece in pieces(data, cuts):
        events.append(outcome(lambda: reassembler.feed(piece)))  # noqa: B023 - called at once
        events.append((reassembler.expected, reassembler.received, reassembler.done))
    events.append(outcome(reassembler.finish))
    return events


@given(
    st.binary(max_size=12).map(lambda h: (b"\x00\x01" + h)[:9]) | st.binary(max_size=12),
    st.binary(max_size=60),
    st.lists(st.integers(0, 100), max_size=6),
    st.integers(-1, 80),
)
def test_reassembler_agrees(header: bytes, body: bytes, cuts: list[int], max_size: int) -> None:
    assert_same(lambda m: reassemble(m, header + body, cuts, max_size), "chunking")


# ---- packet --------------------------------------------------------------------------------


def mutations(seed: int, datagram: bytes) -> list[bytes]:
    rng = random.Random(seed)
    out = [datagram, datagram[: rng.randrange(len(datagram) + 1)]]
    for _ in range(4):
        mutated = bytearray(datagram)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out.append(bytes(mutated))
    return out


def test_packet_peek_agrees_on_real_traffic(quic_traffic: list[bytes]) -> None:
    for i, datagram in enumerate(quic_traffic):
        for variant in mutations(i, datagram[:80]):
            for cid_length in (0, 8, 20):
                assert_same(lambda m, v=variant, n=cid_length: m.peek(v, n), "packet")


@given(st.binary(max_size=100), st.integers(-1, 21))
def test_packet_peek_agrees_on_garbage(data: bytes, cid_length: int) -> None:
    assert_same(lambda m: m.peek(data, cid_length), "packet")


@given(
    st.sampled_from([0x80, 0xC0, 0xD0, 0xE0, 0xF0, 0x40, 0x00]),
    st.sampled_from([0, 1, 0x6B3343CF, 0xFF00001D]),
    st.binary(max_size=22),
    st.binary(max_size=22),
    st.binary(max_size=40),
)
def test_packet_peek_agrees_on_long_headers(
    first: int, version: int, dcid: bytes, scid: bytes, rest: bytes
) -> None:
    data = long_header(first, version, dcid, scid, rest)
    assert_same(lambda m: m.peek(data, 8), "packet")


# ---- retry ---------------------------------------------------------------------------------

KEY = bytes(range(32))
ADDRS = [("192.0.2.1", 443), ("2001:db8::1", 1), ("::ffff:192.0.2.1", 443), ("bad", 1), ("1.2.3.4", -1)]


@given(
    st.sampled_from(ADDRS),
    st.binary(max_size=22),
    st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 2e10),
    st.binary(max_size=20),
)
def test_mint_agrees(addr: tuple[str, int], odcid: bytes, now: float, rscid: bytes) -> None:
    assert_same(lambda m: m.RetryTokens(KEY).mint(addr, odcid, now, rscid), "retry")


@given(
    st.integers(0, 2**32),
    st.sampled_from(ADDRS),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=2),
    st.integers(0, 60),
    st.floats(-20, 20),
)
def test_validate_agrees(
    seed: int, addr: tuple[str, int], flips: list[tuple[int, int]], cut: int, age: float
) -> None:
    from qp2p._pure.retry import RetryTokens

    rng = random.Random(seed)
    token = bytearray(RetryTokens(KEY).mint(("192.0.2.1", 443), rng.randbytes(rng.randrange(21)), 1e9))
    for at, value in flips:
        token[at % len(token)] = value
    data = bytes(token[: len(token) - cut % 3]) if cut < 50 else bytes(token) + b"\0"
    assert_same(lambda m: m.RetryTokens(KEY).validate(data, addr, 1e9 + age), "retry")


@given(st.binary(max_size=80))
def test_validate_agrees_on_garbage(data: bytes) -> None:
    assert_same(lambda m: m.RetryTokens(KEY).validate(data, ADDRS[0], 1e9), "retry")


@given(st.binary(min_size=16, max_size=200), st.binary(max_size=20), st.binary(max_size=20))
def test_mac_is_hmac_sha256_for_any_key_length(key: bytes, odcid: bytes, rscid: bytes) -> None:
    """Keys shorter than, equal to and longer than SHA-256's 64-byte block: RFC 2104 either way."""
    for module in twins("retry"):
        token = module.RetryTokens(key).mint(ADDRS[0], odcid, 1e9, rscid)
        assert token[-16:] == hmac.digest(key, token[:-16] + rscid, "sha256")[:16]
        assert module.RetryTokens(key).validate(token, ADDRS[0], 1e9, rscid) == odcid


def test_tokens_cross_backends() -> None:
    fast, pure = twins("retry")
    a, b = fast.RetryTokens(KEY), pure.RetryTokens(KEY)
    for i in range(50):
        odcid = bytes([i]) * (i % 21)
        token = a.mint(ADDRS[i % 3], odcid, 1e9 + i, b"r")
        assert token == b.mint(ADDRS[i % 3], odcid, 1e9 + i, b"r")
        assert b.validate(token, ADDRS[i % 3], 1e9 + i, b"r") == odcid


@given(
    budget=st.integers(-(2**70), 2**70)
    | st.integers(-(2**63) - 2, -(2**63) + 2)
    | st.integers(2**63 - 2, 2**63 + 2),
    count=st.integers(0, 4),
)
def test_framing_take_agrees_on_any_budget(budget: int, count: int) -> None:
    """A budget is any int (a window may be configured past 2**63): both take what fits."""
    stream = valid_stream(count, count)
    assert_same(lambda m: taken(m, lambda: m.FrameDecoder(64).take(stream, 0, budget, 73)), "framing")
