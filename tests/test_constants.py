"""The shared names load without torch (#23 item 2): ``wsi_ocelot.constants`` for the CLI and
the library, and the batch report, which draws the purity legend from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_ocelot.cells import CellBatch, cancer_area
from wsi_ocelot.errors import CellClassError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["wsi_ocelot.constants", "wsi_ocelot.cohort.report"])
def test_imports_without_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", f"{module} imports torch"


def test_cell_batch_checks_classes_once_and_converts_both_ways() -> None:
    p = np.array([[1.5, 2.5, 1.0, 0.9], [3.0, 4.0, 2.0, 0.4]])
    cells = CellBatch.from_array(p, np.array([True, False]))
    assert len(cells) == 2 and cells.cls.dtype == np.uint8
    np.testing.assert_array_equal(cells.to_array(), p)
    with pytest.raises(CellClassError, match="cell classes must be 1"):
        CellBatch.from_array([[0.0, 0.0, 3.0, 0.5]])
    with pytest.raises(ValueError, match="one length"):
        CellBatch(np.zeros(2), np.zeros(1), np.ones(2), np.zeros(2))


def test_cancer_area_rule_on_probabilities_and_uint8() -> None:
    np.testing.assert_array_equal(cancer_area(np.array([127, 128], np.uint8)), [False, True])
    np.testing.assert_array_equal(cancer_area(np.array([0.4999, 0.5])), [False, True])
