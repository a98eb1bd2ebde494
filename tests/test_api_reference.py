"""docs/api.md is what scripts/api_reference.py renders from the code, and nothing public is undocumented."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import qp2p

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_names(page: str, heading: str) -> set[str]:
    """Every backticked name in the first cell of the table rows under ``heading``."""
    section = page.split(heading, 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        names.update(re.findall(r"`([a-z_0-9]+)`", row))
    return names


def test_the_page_is_what_the_code_renders() -> None:
    """Fails after any public change until ``python scripts/api_reference.py`` is run again."""
    assert (ROOT / "docs" / "api.md").read_text() == _generator().render()


def test_every_public_name_has_a_docstring() -> None:
    """render() collects every public class, function, method and property without one."""
    generator = _generator()
    generator.render()
    assert generator.MISSING == []


def test_a_missing_docstring_is_caught() -> None:
    generator = _generator()

    class Bare:
        def method(self) -> None:
            pass

    list(generator.render_class("qp2p.Bare", Bare))
    assert generator.MISSING == ["qp2p.Bare", "qp2p.Bare.method"]


def test_every_config_field_has_a_row_in_the_configuration_table() -> None:
    page = (ROOT / "docs" / "endpoint.md").read_text()
    documented = _table_names(page, "## Configuration")
    fields = {field.name for field in dataclasses.fields(qp2p.Config)}
    assert fields - documented == set()


def test_every_stats_field_has_a_row_in_the_observability_table() -> None:
    page = (ROOT / "docs" / "observability.md").read_text()
    documented = _table_names(page, "## Counters and gauges")
    fields = {field.name for field in dataclasses.fields(qp2p.EndpointStats)}
    assert fields - documented == set()
