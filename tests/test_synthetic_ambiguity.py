"""``ambiguity``: more context-dependent cells in the synthetic data, Table 3 kept, and
the default (0) output unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
from helpers import run_cli

from wsi_ocelot.synthetic.dataset import ORGANS, SyntheticDatasetConfig, ambiguous_params
from wsi_ocelot.synthetic.layout import (
    BC,
    LYMPHOCYTE,
    TC,
    TUMOUR_SMALL,
    SyntheticParams,
    build_tissue_model,
)


def test_zero_is_the_default_tissue() -> None:
    p = dataclasses.replace(SyntheticParams(), **ORGANS["kidney"])
    assert ambiguous_params(p, 0.0) is p
    assert SyntheticDatasetConfig().ambiguity == 0.0
    full = ambiguous_params(p, 1.0)
    assert full.lymph_aggregate_purity == 1.0 and full.small_tc_zone_fraction == pytest.approx(0.45)
    with pytest.raises(ValueError):
        ambiguous_params(p, 1.5)
    with pytest.raises(ValueError):
        SyntheticDatasetConfig(ambiguity=-0.1)


def _stats(a: float) -> np.ndarray:
    rows = []
    for seed, organ in zip((0, 1), ("kidney", "bladder"), strict=True):
        m = build_tissue_model(
            1700,
            1700,
            seed,
            ambiguous_params(dataclasses.replace(SyntheticParams(), **ORGANS[organ]), a),
        )
        c = m.cells
        inca = shapely.contains_xy(m.cancer_area, c.xy[:, 0], c.xy[:, 1])
        tc, bc = c.cls == TC, c.cls == BC
        lymph_like = (c.kind == LYMPHOCYTE) | (c.kind == TUMOUR_SMALL)
        rows.append(
            [
                (tc & inca).sum() / tc.sum(),
                (bc & ~inca).sum() / bc.sum(),
                (c.kind == TUMOUR_SMALL).sum() / tc.sum(),
                m.small_tc_zones.area / m.cancer_area.area,
                lymph_like.sum(),
            ]
        )
    return np.mean(rows, axis=0)


def test_ambiguity_keeps_table3_and_adds_lookalikes() -> None:
    base, amb = _stats(0.0), _stats(1.0)
    for s in (base, amb):
        assert s[0] == pytest.approx(0.93, abs=0.02) and s[1] == pytest.approx(0.85, abs=0.02)
    assert amb[2] > base[2] + 0.05  # more of the TC are small and round
    assert amb[3] > base[3] + 0.08  # larger share of CA is small-TC zone
    assert amb[4] > base[4]  # more lymphocyte-like cells overall


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_synth_dataset_cli_ambiguity(tmp_path) -> None:
    """`wsi-ocelot synth-dataset --ambiguity` (and `python -m wsi_ocelot.synthetic`, the same verb) records it; out of range is one line."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_ocelot.synthetic",
            str(tmp_path / "d"),
            "--seed",
            "3",
            "--train",
            "1",
            "--val",
            "0",
            "--test",
            "0",
            "--tile-size",
            "64",
            "--ambiguity",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ambiguity 1" in proc.stdout
    assert (
        json.loads((tmp_path / "d" / "metadata.json").read_text())["general_info"]["ambiguity"]
        == 1.0
    )
    proc = run_cli("synth-dataset", str(tmp_path / "e"), "--ambiguity", "1.5", timeout=120)
    assert (
        proc.returncode == 2
        and "ambiguity 1.5 is outside [0, 1]" in proc.stderr
        and "Traceback" not in proc.stderr
    )
