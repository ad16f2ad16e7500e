"""Smooth noise defined in physical units (µm), evaluable at points or on pixel grids.

A :class:`Lattice` holds random values on a square lattice of ``spacing`` µm and is
interpolated with the cubic B-spline kernel (C², no overshoot). The same field is
evaluated

* at arbitrary points (cell placement) by gathering the 4×4 neighbourhood, and
* on an axis-aligned pixel grid (rendering) as ``Wy @ V @ Wx.T`` with sparse B-spline
  weight matrices, which costs ~4 multiply-adds per output pixel and axis.

Both paths give identical values, so what the generator decides at a cell's position is
what the renderer draws there, at any MPP. Fine lattices wrap around (periodic) so that
their memory does not grow with the slide.

:func:`hash_uniform` is per-pixel white noise from integer pixel indices, so that the
same pixel gets the same noise however a region is split into bands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import sparse

log = logging.getLogger(__name__)


def _bspline_weights(f: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights ``(..., 4)`` for fractional positions ``f`` in [0, 1)."""
    f2 = f * f
    f3 = f2 * f
    w0 = (1 - f) ** 3 / 6.0
    w1 = (3 * f3 - 6 * f2 + 4) / 6.0
    w2 = (-3 * f3 + 3 * f2 + 3 * f + 1) / 6.0
    w3 = f3 / 6.0
    return np.stack([w0, w1, w2, w3], axis=-1)


# Mean over f of sum_k w_k(f)^2: the variance of a 1-D B-spline of iid N(0, 1) values.
_T = (np.arange(1000) + 0.5) / 1000
_VAR1D = float(np.mean(np.sum(_bspline_weights(_T) ** 2, axis=-1)))
_NORM = 1.0 / _VAR1D  # 2-D std = _VAR1D (product of two 1-D variances, sqrt) -> scale to ~1


class Lattice:
    """Random N(0, 1) values on a (periodic) lattice of ``spacing`` µm, unit-variance output.

    ``extent_um = (width, height)`` is the region the field must cover without wrapping;
    the lattice is capped at ``max_nodes`` per axis, beyond which it repeats.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        spacing_um: float,
        extent_um: tuple[float, float],
        *,
        max_nodes: int = 512,
    ) -> None:
        self.spacing = float(spacing_um)
        nx = int(min(max_nodes, np.ceil(extent_um[0] / spacing_um) + 8))
        ny = int(min(max_nodes, np.ceil(extent_um[1] / spacing_um) + 8))
        self.values = rng.standard_normal((max(ny, 4), max(nx, 4))) * _NORM

    def at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Field values at points ``(x_um, y_um)`` (µm, any shape)."""
        x = np.asarray(x_um, np.float64) / self.spacing
        y = np.asarray(y_um, np.float64) / self.spacing
        ix = np.floor(x).astype(np.int64)
        iy = np.floor(y).astype(np.int64)
        wx = _bspline_weights(x - ix)
        wy = _bspline_weights(y - iy)
        ny, nx = self.values.shape
        out = np.zeros(x.shape, np.float64)
        for a in range(4):
            rows = np.mod(iy + a - 1, ny)
            for b in range(4):
                cols = np.mod(ix + b - 1, nx)
                out += wy[..., a] * wx[..., b] * self.values[rows, cols]
        return out

    def _weights_matrix(self, coords_um: np.ndarray, n: int) -> sparse.csr_matrix:
        t = coords_um / self.spacing
        i = np.floor(t).astype(np.int64)
        w = _bspline_weights(t - i)
        rows = np.repeat(np.arange(t.size), 4)
        cols = np.mod(i[:, None] + np.arange(-1, 3)[None, :], n).ravel()
        return sparse.csr_matrix((w.ravel(), (rows, cols)), shape=(t.size, n))

    def grid(self, xs_um: np.ndarray, ys_um: np.ndarray) -> np.ndarray:
        """Field on the grid ``ys_um × xs_um`` → ``(len(ys), len(xs))`` float32."""
        ny, nx = self.values.shape
        wx = self._weights_matrix(np.asarray(xs_um, np.float64), nx)  # (W, nx)
        wy = self._weights_matrix(np.asarray(ys_um, np.float64), ny)  # (H, ny)
        a = wx @ self.values.T  # (W, ny)
        return np.asarray(wy @ a.T, dtype=np.float32)  # (H, W)


class Fbm:
    """Sum of lattices (octaves) with given spacings (µm) and amplitudes."""

    def __init__(
        self,
        rng: np.random.Generator,
        octaves: Sequence[tuple[float, float]],
        extent_um: tuple[float, float],
        *,
        max_nodes: int = 512,
    ) -> None:
        self.octaves = [
            (Lattice(rng, s, extent_um, max_nodes=max_nodes), float(a)) for s, a in octaves
        ]
        self.std = float(np.sqrt(sum(a * a for _, a in self.octaves)))

    def at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Values at points (µm), normalised to ~unit variance."""
        out = sum(a * lat.at(x_um, y_um) for lat, a in self.octaves)
        return np.asarray(out) / self.std

    def grid(self, xs_um: np.ndarray, ys_um: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """Values on a pixel grid, normalised to ~unit variance.

        With ``mpp`` given, octaves finer than ~2 px are attenuated (a cheap stand-in for
        area averaging), so renderings at different MPPs agree after resizing."""
        out = np.zeros((len(ys_um), len(xs_um)), np.float32)
        for lat, a in self.octaves:
            gain = a
            if mpp is not None:
                gain = a / (1.0 + (1.5 * mpp / lat.spacing) ** 2)
            if gain > 1e-3 * self.std:
                out += np.float32(gain) * lat.grid(xs_um, ys_um)
        return out / np.float32(self.std)


def hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic white noise in [0, 1) from integer pixel indices (any broadcastable
    shapes) and a seed; float32."""
    x = np.asarray(ix).astype(np.int64).astype(np.uint32)
    y = np.asarray(iy).astype(np.int64).astype(np.uint32)
    s = np.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h = (x * np.uint32(0x27D4EB2D)) ^ (y * np.uint32(0x165667B1)) ^ s
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1``."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)
