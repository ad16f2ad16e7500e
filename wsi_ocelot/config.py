"""Configuration as frozen dataclasses, loaded from YAML: the geometry (resolutions, tiles,
margins) and the post-processing (peak finding) every layer shares.

Unknown keys are an error that lists the allowed ones; CLI flags override file values
through :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import yaml

from wsi_ocelot.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class GeometryConfig:
    """Working resolutions and tile sizes. OCELOT's values by default.

    ``cell_mpp``/``tissue_mpp`` are nominal µm/px of the cell tile and its context; the
    context covers ``context_factor`` × the cell tile's field of view in each direction
    and is resized to ``tile_size`` px, so ``tissue_mpp == cell_mpp * context_factor``.
    ``cell_margin`` (cell-MPP px) is the overlap on each side of a cell tile: cell tiles
    step by ``tile_size - 2 * cell_margin`` and each owns only its core.
    ``tissue_margin`` (tissue-MPP px) is the same for the tissue-pass grid.
    """

    cell_mpp: float = 0.2
    tissue_mpp: float = 0.8
    tile_size: int = 1024
    context_factor: int = 4
    cell_margin: int = 64
    tissue_margin: int = 128

    def __post_init__(self) -> None:
        if self.cell_mpp <= 0 or self.tissue_mpp <= 0:
            raise ConfigError(
                None,
                f"cell_mpp and tissue_mpp must be > 0, got {self.cell_mpp}, {self.tissue_mpp}",
                "give positive µm/px values",
            )
        if self.tile_size < 16:
            raise ConfigError(
                None,
                f"tile_size must be >= 16, got {self.tile_size}",
                "use a tile size such as 1024",
            )
        if self.context_factor < 1:
            raise ConfigError(
                None, f"context_factor must be >= 1, got {self.context_factor}", "use 4 (OCELOT)"
            )
        ratio = self.tissue_mpp / self.cell_mpp
        if abs(ratio - self.context_factor) > 0.02 * self.context_factor:
            raise ConfigError(
                None,
                f"tissue_mpp / cell_mpp = {ratio:.3f} but context_factor = {self.context_factor}",
                "set tissue_mpp = cell_mpp * context_factor",
            )
        if self.tile_size % self.context_factor:
            raise ConfigError(
                None,
                f"tile_size {self.tile_size} is not divisible by context_factor {self.context_factor}",
                "pick a tile size that is a multiple of the context factor",
            )
        for name, margin in (
            ("cell_margin", self.cell_margin),
            ("tissue_margin", self.tissue_margin),
        ):
            if margin < 0 or 2 * margin >= self.tile_size:
                raise ConfigError(
                    None,
                    f"{name} must be in [0, tile_size/2), got {margin}",
                    f"use a margin below {self.tile_size // 2}",
                )


@dataclass(frozen=True)
class PeakConfig:
    """Peak detection parameters, in probability-map pixels (the cell tile's pixels).

    Attributes
    ----------
    min_distance
        peaks closer than this (Chebyshev, px) are merged; the NMS window is
        ``2 * min_distance + 1``. Reference: 3.
    threshold
        keep maxima whose (blurred) foreground is strictly above this. Reference: 0.
    sigma
        Gaussian blur of the foreground before peak finding, px; 0 = no blur. Reference: 3.
    truncate
        the blur kernel's radius in sigmas (OpenCV's default kernel: 4).
    drop_background
        drop peaks where P(no cell) >= the larger cell-class probability.
    """

    min_distance: int = 3
    threshold: float = 0.0
    sigma: float = 3.0
    truncate: float = 4.0
    drop_background: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.min_distance, int) or self.min_distance < 1:
            raise ConfigError(
                None,
                f"peaks.min_distance must be an integer >= 1, got {self.min_distance!r}",
                "use 3 (px, OCELOT reference)",
            )
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(
                None,
                f"peaks.threshold must be in [0, 1), got {self.threshold}",
                "use 0.0 (OCELOT reference) or a small probability",
            )
        if self.sigma < 0 or self.truncate <= 0:
            raise ConfigError(
                None,
                f"peaks.sigma must be >= 0 and truncate > 0, got {self.sigma}, {self.truncate}",
                "use sigma 3.0 (0 disables the blur) and truncate 4.0",
            )


def _is_dataclass_type(tp: Any) -> TypeGuard[type[Any]]:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(
    cls: type[T],
    data: dict[str, Any] | None,
    *,
    source: str | os.PathLike[str] | None = None,
    where: str = "",
) -> T:
    """Build the frozen dataclass ``cls`` from a mapping; unknown keys are an error.

    Nested dataclass fields are built from nested mappings; tuples from lists.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            source,
            f"unknown key(s) {', '.join(repr(k) for k in unknown)}{' in ' + where if where else ''}",
            f"use only {', '.join(sorted(allowed))}",
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints.get(name)
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = from_dict(tp, value, source=source, where=f"{where}.{name}" if where else name)
        elif (
            origin in (types.UnionType, typing.Union)
            and len(args) == 1
            and _is_dataclass_type(args[0])
            and isinstance(value, dict)
        ):
            value = from_dict(args[0], value, source=source, where=name)
        elif (origin is tuple or tp is tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(source, err.problem, err.fix) from err
    except TypeError as err:
        raise ConfigError(
            source, f"invalid config for {cls.__name__}: {err}", "check the value types"
        ) from err


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "config file not found", "pass the path of an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(
            p, f"not valid YAML ({str(err).splitlines()[0]})", "fix the YAML syntax"
        ) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            p, f"top level must be a mapping, got {type(data).__name__}", "write 'key: value' lines"
        )
    return data


def load_config(cls: type[T], path: str | os.PathLike[str], key: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally from the sub-mapping ``key``)."""
    data = load_yaml(path)
    if key is not None:
        data = data.get(key) or {}
    return from_dict(cls, data, source=path)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a (nested) dataclass."""
    return dataclasses.asdict(obj)


def load_geometry(
    path: str | os.PathLike[str] | None = None, tile_size: int | None = None
) -> GeometryConfig:
    """The geometry of a command: the ``geometry:`` mapping of the YAML ``path`` (OCELOT's
    values without one), with ``tile_size`` (``--tile-size``) scaling both margins along."""
    geo = load_config(GeometryConfig, path, key="geometry") if path else GeometryConfig()
    if tile_size:
        ratio = tile_size / geo.tile_size
        geo = dataclasses.replace(
            geo,
            tile_size=tile_size,
            cell_margin=round(geo.cell_margin * ratio),
            tissue_margin=round(geo.tissue_margin * ratio),
        )
    return geo
