"""Retry token minting and validation, compiled against pure (target: tokens >= 2x pure)."""

from __future__ import annotations

import random
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from qp2p._pure.retry import RetryTokens

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

TOKENS = 1000
KEY = bytes(range(32))
NOW = 1_700_000_000.0

Client = tuple[tuple[str, int], bytes, bytes]


@pytest.fixture(scope="module")
def clients() -> list[Client]:
    """``(address, original dcid, retry scid)`` for 1,000 IPv4 clients, 8-byte connection ids."""
    rng = random.Random(9000)
    return [
        ((f"198.51.100.{i % 254 + 1}", 1024 + i), rng.randbytes(8), rng.randbytes(8)) for i in range(TOKENS)
    ]


@pytest.fixture(scope="module")
def reference_tokens(clients: list[Client]) -> list[bytes]:
    """The tokens the pure reference mints: the format is fixed, so both backends must match them."""
    tokens = RetryTokens(KEY)
    return [tokens.mint(addr, odcid, NOW, scid) for addr, odcid, scid in clients]


@pytest.mark.benchmark(group="retry.mint_validate.1000")
def test_retry_mint_validate_1000(
    benchmark: BenchmarkFixture, retry: ModuleType, clients: list[Client]
) -> None:
    """A Retry sent and the client's next Initial checked: one mint and one validate per client."""
    tokens = retry.RetryTokens(KEY)
    mint, validate = tokens.mint, tokens.validate
    odcids = [odcid for _, odcid, _ in clients]

    def run() -> None:
        found = [validate(mint(addr, odcid, NOW, scid), addr, NOW, scid) for addr, odcid, scid in clients]
        assert found == odcids

    benchmark(run)


@pytest.mark.benchmark(group="retry.mint.1000")
def test_retry_mint_1000(
    benchmark: BenchmarkFixture, retry: ModuleType, clients: list[Client], reference_tokens: list[bytes]
) -> None:
    """Minting alone, for 1,000 clients."""
    mint = retry.RetryTokens(KEY).mint

    def run() -> None:
        assert [mint(addr, odcid, NOW, scid) for addr, odcid, scid in clients] == reference_tokens

    benchmark(run)


@pytest.mark.benchmark(group="retry.validate.1000")
def test_retry_validate_1000(
    benchmark: BenchmarkFixture, retry: ModuleType, clients: list[Client], reference_tokens: list[bytes]
) -> None:
    """Validation alone, of 1,000 genuine tokens."""
    validate = retry.RetryTokens(KEY).validate
    cases = [(token, addr, scid) for token, (addr, _, scid) in zip(reference_tokens, clients, strict=True)]
    odcids = [odcid for _, odcid, _ in clients]

    def run() -> None:
        assert [validate(token, addr, NOW, scid) for token, addr, scid in cases] == odcids

    benchmark(run)
