"""Cell–tissue statistics of a synthetic slide, in the layout of the paper's Table 3."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True)
class SyntheticStats:
    """Counts of tumour (TC) and background (BC) cells inside / outside the cancer area.

    ``ca_fraction`` is CA area / tissue area; ``tissue_area_mm2`` the tissue area."""

    tc_in_ca: int
    tc_outside_ca: int
    bc_in_ca: int
    bc_outside_ca: int
    ca_fraction: float
    tissue_area_mm2: float

    @property
    def n_tc(self) -> int:
        return self.tc_in_ca + self.tc_outside_ca

    @property
    def n_bc(self) -> int:
        return self.bc_in_ca + self.bc_outside_ca

    @property
    def n_cells(self) -> int:
        return self.n_tc + self.n_bc

    @property
    def tc_in_ca_fraction(self) -> float:
        """Share of TC inside CA (paper: ~0.93)."""
        return self.tc_in_ca / self.n_tc if self.n_tc else float("nan")

    @property
    def bc_outside_ca_fraction(self) -> float:
        """Share of BC outside CA (paper: ~0.85)."""
        return self.bc_outside_ca / self.n_bc if self.n_bc else float("nan")

    @property
    def tc_fraction(self) -> float:
        """Share of TC among all cells (OCELOT: ~0.35)."""
        return self.n_tc / self.n_cells if self.n_cells else float("nan")

    def format_table(self) -> str:
        """A Table-3-style text block with counts and row percentages."""

        def pct(a: int, n: int) -> str:
            return f"{100.0 * a / n:5.1f} %" if n else "    – "

        lines = [
            "Cell counts by tissue class (cf. OCELOT paper, Table 3)",
            f"{'':4}{'in CA':>19}{'outside CA':>20}{'total':>9}",
            f"{'TC':4}{self.tc_in_ca:>9} ({pct(self.tc_in_ca, self.n_tc)}){self.tc_outside_ca:>10} ({pct(self.tc_outside_ca, self.n_tc)}){self.n_tc:>9}",
            f"{'BC':4}{self.bc_in_ca:>9} ({pct(self.bc_in_ca, self.n_bc)}){self.bc_outside_ca:>10} ({pct(self.bc_outside_ca, self.n_bc)}){self.n_bc:>9}",
            f"TC share of all cells: {pct(self.n_tc, self.n_cells).strip()} (OCELOT ~35 %)",
            f"CA fraction of tissue: {100 * self.ca_fraction:.1f} % (paper Table 4: 40 %); "
            f"tissue area {self.tissue_area_mm2:.3f} mm²",
        ]
        return "\n".join(lines)


def compute_stats(
    cells: np.ndarray, cancer_area: BaseGeometry, tissue_area: float, *, unit_um: float = 1.0
) -> SyntheticStats:
    """Table-3 counts of ``cells`` (N, 3) ``[x, y, class]`` against ``cancer_area``.

    Coordinates and geometry share one unit (level-0 px or µm); ``unit_um`` is µm per
    unit, ``tissue_area`` is in unit². Class 1 = BC, 2 = TC."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3)
    if len(cells) and not cancer_area.is_empty:
        inca = shapely.contains_xy(cancer_area, cells[:, 0], cells[:, 1])
    else:
        inca = np.zeros(len(cells), bool)
    tc = cells[:, 2] == 2
    bc = cells[:, 2] == 1
    ca_frac = cancer_area.area / tissue_area if tissue_area > 0 else 0.0
    return SyntheticStats(
        tc_in_ca=int((tc & inca).sum()),
        tc_outside_ca=int((tc & ~inca).sum()),
        bc_in_ca=int((bc & inca).sum()),
        bc_outside_ca=int((bc & ~inca).sum()),
        ca_fraction=float(ca_frac),
        tissue_area_mm2=float(tissue_area * unit_um**2 / 1e6),
    )
