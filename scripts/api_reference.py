"""Writes docs/api.md, the API reference, from the public names' signatures and docstrings.

    python scripts/api_reference.py           # rewrite docs/api.md
    python scripts/api_reference.py --check   # exit 1 if docs/api.md is not what it would write

The public API is every name in the ``__all__`` of the modules in ``MODULES``. Classes list
their public methods and properties, dataclasses their fields, enums their members; a name
without a docstring is an error, so nothing public goes undocumented. tests/test_api_reference.py
runs ``--check``'s comparison, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "api.md"
MODULES = ("qp2p", "qp2p.tls", "qp2p.metrics")
# Classes whose instances qp2p hands out: their constructors are not for applications.
HANDED_OUT = frozenset({"Connection", "Message", "MetricsServer"})
# Constants whose value depends on the install, described instead of shown.
RUNTIME = {
    "BACKEND": "`'fast'` (the compiled `_qp2p_fast` modules) or `'pure'`, chosen once at import",
    "USING_EXTENSIONS": "`BACKEND == 'fast'`",
    "__version__": "the installed version",
}
HEADER = """# API reference

Generated from the docstrings by `scripts/api_reference.py` (do not edit by hand: run it, and
`tests/test_api_reference.py` fails whenever this page and the code disagree). It lists every
public name: the `__all__` of {modules}. What the names mean together is in the concept pages:
`docs/endpoint.md` (the endpoint, connections, messages, every `Config` field), `docs/security.md`
(trust modes, limits), `docs/joining.md`, `docs/nat.md`, `docs/observability.md`.
"""


class Undocumented(Exception):
    """Public names without a docstring, all of them in one message."""


MISSING: list[str] = []  # filled while rendering, checked by render()


def doc(owner: str, obj: object) -> str:
    """The object's own docstring, dedented; noted in ``MISSING`` when it has none."""
    text = inspect.getdoc(obj) if obj.__doc__ else None
    if not text:
        MISSING.append(owner)
    return text or ""


def annotation(value: object) -> str:
    """An annotation as the source wrote it (they are strings here: postponed evaluation)."""
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature(func: Callable[..., Any]) -> str:
    """``(a: int, b: str = 'x') -> T``, without ``self``, ``cls`` or private (underscore) parameters."""
    sig = inspect.signature(func)
    params = [
        p.replace(annotation=annotation(p.annotation)) if p.annotation is not p.empty else p
        for p in sig.parameters.values()
        if not p.name.startswith("_") and p.name not in ("self", "cls")
    ]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    for p in params:  # str() quotes string annotations: show them as written
        if p.annotation is not p.empty:
            text = text.replace(f"{p.name}: {p.annotation!r}", f"{p.name}: {p.annotation}", 1)
    returns = sig.return_annotation
    return text if returns is sig.empty or returns in ("None", None) else f"{text} -> {annotation(returns)}"


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties the class itself defines, in source order."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
            yield name, value


def field_default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory.__qualname__}()`"
    return "required"


def public_bases(cls: type) -> list[type]:
    """The classes ``cls`` derives from, leaving out private mixins."""
    return [base for base in cls.__bases__ if not base.__name__.startswith("_")]


def render_class(qualified: str, cls: type) -> Iterator[str]:
    if issubclass(cls, BaseException):
        return
    kind = "enum" if issubclass(cls, enum.Enum) else "dataclass" if dataclasses.is_dataclass(cls) else "class"
    init = signature(cls) if kind == "class" and cls.__name__ not in HANDED_OUT else ""
    yield f"### {kind} `{qualified}{init}`\n\n{doc(qualified, cls)}\n"
    if kind == "enum":
        assert issubclass(cls, enum.Enum)
        yield "| member | value |\n|---|---|\n" + "".join(f"| `{m.name}` | `{m.value!r}` |\n" for m in cls)
    elif dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        yield "| field | type | default |\n|---|---|---|\n" + "".join(
            f"| `{f.name}` | `{f.type}` | {field_default(f)} |\n" for f in fields
        )
    for name, value in members(cls):
        where = f"{qualified}.{name}"
        if isinstance(value, property):
            returns = annotation(inspect.signature(value.fget).return_annotation) if value.fget else ""
            yield f"#### property `{name}: {returns}`\n\n{doc(where, value)}\n"
            continue
        func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
        prefix = "async " if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func) else ""
        kind = (
            "classmethod "
            if isinstance(value, classmethod)
            else "staticmethod "
            if isinstance(value, staticmethod)
            else ""
        )
        yield f"#### {kind}{prefix}`{name}{signature(func)}`\n\n{doc(where, func)}\n"


def render_module(module: ModuleType) -> Iterator[str]:
    yield f"## `{module.__name__}`\n\n{doc(module.__name__, module)}\n"
    names = list(module.__all__)
    errors = [
        n
        for n in names
        if isinstance(getattr(module, n), type) and issubclass(getattr(module, n), BaseException)
    ]
    for name in names:
        value = getattr(module, name)
        qualified = f"{module.__name__}.{name}"
        if isinstance(value, type):
            yield from render_class(qualified, value)
        elif callable(value):
            prefix = "async " if inspect.iscoroutinefunction(value) else ""
            yield f"### {prefix}`{qualified}{signature(value)}`\n\n{doc(qualified, value)}\n"
    constants = [n for n in names if not callable(getattr(module, n))]
    if constants:
        yield "### Constants\n\n| name | value |\n|---|---|\n" + "".join(
            f"| `{module.__name__}.{n}` | {RUNTIME.get(n) or f'`{getattr(module, n)!r}`'} |\n"
            for n in constants
        )
    if errors:
        yield "### Exceptions\n\n| exception | subclass of | raised when |\n|---|---|---|\n" + "".join(
            f"| `{n}` | {', '.join(f'`{b.__name__}`' for b in public_bases(getattr(module, n)))} | "
            f"{doc(n, getattr(module, n)).replace(chr(10), ' ')} |\n"
            for n in errors
        )


def render() -> str:
    """The whole page, as ``docs/api.md`` should hold it."""
    MISSING.clear()
    modules = [importlib.import_module(name) for name in MODULES]
    listed = ", ".join(f"`{name}`" for name in MODULES)
    parts = [HEADER.format(modules=listed)]
    for module in modules:
        parts.extend(render_module(module))
    if MISSING:
        raise Undocumented("no docstring: " + ", ".join(MISSING))
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    page = render()
    if args.check:
        if PAGE.read_text() != page:
            print(f"{PAGE} is out of date: run python scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
