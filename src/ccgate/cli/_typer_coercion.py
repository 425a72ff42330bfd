"""Keep typer's pydantic-based value coercion off the paths that never need it.

typer 0.29 coerces every non-flag parameter through a pydantic `TypeAdapter`, built on first use, and builds it
even for a value that is absent: any command with an option then imports pydantic and builds schemas (about
0.3 s here) before doing its work. Absent values and plain strings come out of those adapters unchanged, so
they skip them here; every other value (numbers, paths, choices, parsers, lists of anything else) still goes
through typer's own adapter, built lazily on first use, so values and error messages stay typer's.

Only typer's private coercion seam (`typer.core.build_runtime_param`) is wrapped, and only when it is there:
on a typer without it nothing changes (tests/test_cli_version.py notices the lost speed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args, get_origin

_INSTALLED = False


def install() -> None:
    """Wrap typer's runtime-parameter factory once per process; a no-op on typer versions without it."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    try:
        from typer import core
        from typer._coercion import RuntimeParam
    except ImportError:  # pragma: no cover - another typer: nothing to wrap
        return
    original: Callable[[Any], Any] | None = getattr(core, "build_runtime_param", None)
    if original is None or getattr(original, "_ccgate_lazy", False):  # pragma: no cover
        return
    build: Callable[[Any], Any] = original

    class LazyRuntimeParam(RuntimeParam):
        """`coerce` returns absent values before reaching `_coerce_value` (typer's own rule); strings skip the
        adapter; anything else builds typer's runtime parameter on first use and delegates to it."""

        _descriptor: Any
        _real: Any
        _plain: str | None

        def __init__(self, descriptor: Any) -> None:
            object.__setattr__(self, "parameter_info", descriptor.parameter_info)
            object.__setattr__(self, "annotation", descriptor.annotation)
            object.__setattr__(self, "_descriptor", descriptor)
            object.__setattr__(self, "_real", None)
            object.__setattr__(self, "_plain", _plain_text_kind(descriptor))

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            plain = self._plain
            if plain == "str" and type(value) is str:
                return value
            if plain == "list" and type(value) in (list, tuple) and all(type(item) is str for item in value):
                return list(value)
            real = self._real
            if real is None:
                real = build(self._descriptor)
                object.__setattr__(self, "_real", real)
            return real._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        if getattr(descriptor, "file_annotation", None) is not None:
            return build(descriptor)  # files are opened, not validated: typer's own class, no pydantic
        return LazyRuntimeParam(descriptor)

    build_runtime_param._ccgate_lazy = True  # type: ignore[attr-defined]
    setattr(core, "build_runtime_param", build_runtime_param)  # noqa: B010 - not exported: no plain assignment


def _plain_text_kind(descriptor: Any) -> str | None:
    """ "str" for a `str` parameter, "list" for `list[str]`, without a custom parser (typer's adapters hand such
    string values back unchanged, a list as a list); None for anything else."""
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
    annotation = descriptor.annotation
    if annotation is str:
        return "str"
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return "list"
    return None
