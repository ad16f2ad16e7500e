"""Public names a package imports on first use (PEP 562), so that importing the package, and
``wsi-ocelot --help``, stay instant: torch, scipy and the renderer load only when a name that
needs them is asked for. Imports nothing of the package."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, api: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public names are ``api``'s keys:
    each maps to the module that defines it (``"module"``, or ``"module:attr"`` when the
    package names it differently). A name is imported when first asked for, then kept in the
    package's namespace."""

    def __getattr__(name: str) -> Any:
        where = api.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = where.partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(api))

    return __getattr__, __dir__
