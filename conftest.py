"""Shared by tests/ and benches/: the ``backend`` fixture runs each test against both twins.

``--fast/--no-fast`` chooses whether the compiled backend is tested; it defaults to on unless
``QP2P_NO_EXTENSIONS`` is set. Off deselects the ``fast_ext`` items (never skips them); on,
a missing extension makes those tests fail, so the fast path can never silently go missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

import qp2p

settings.register_profile(
    "default", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=5000)
settings.load_profile(os.environ.get("QP2P_HYPOTHESIS_PROFILE", "default"))


@dataclass(frozen=True)
class Backend:
    """One implementation of the hot-path modules: its name and the package that holds them."""

    name: str
    package: str

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.{name}")

    def __str__(self) -> str:
        return self.name


FAST = Backend("fast", "_qp2p_fast")
PURE = Backend("pure", "qp2p._pure")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("QP2P_NO_EXTENSIONS", "") in ("", "0"),
        help="also test the compiled backend (default: on unless QP2P_NO_EXTENSIONS is set)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"qp2p {qp2p.__version__} from {os.path.dirname(qp2p.__file__)}, backend {qp2p.BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("fast"):
        return
    kept = [item for item in items if item.get_closest_marker("fast_ext") is None]
    deselected = [item for item in items if item.get_closest_marker("fast_ext") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(
    scope="session",
    params=[pytest.param(FAST, marks=pytest.mark.fast_ext, id="fast"), pytest.param(PURE, id="pure")],
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn; the fast one fails (not skips) when the extension is missing."""
    chosen: Backend = request.param
    return chosen


@pytest.fixture(scope="session")
def framing(backend: Backend) -> ModuleType:
    return backend.module("framing")


@pytest.fixture(scope="session")
def chunking(backend: Backend) -> ModuleType:
    return backend.module("chunking")


@pytest.fixture(scope="session")
def retry(backend: Backend) -> ModuleType:
    return backend.module("retry")


@pytest.fixture(scope="session")
def packet(backend: Backend) -> ModuleType:
    return backend.module("packet")
