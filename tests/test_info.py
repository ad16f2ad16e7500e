"""``wsi-ocelot info`` on a slide without MPP (issue 19: "`info` refuses a slide without MPP; it
should show everything else and say the MPP is missing")."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from helpers import run_cli

from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff


def _info(*args: str) -> subprocess.CompletedProcess:
    return run_cli("info", *args, timeout=300)


@pytest.fixture()
def nompp(tmp_path):
    """A pink 'tissue' square on glass, written without resolution tags: no MPP anywhere."""
    img = np.full((600, 600, 3), 242, np.uint8)
    img[150:450, 150:450] = (215, 130, 185)
    path = tmp_path / "nompp.tiff"
    write_pyramidal_tiff(path, img, None)
    return path


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_without_mpp_shows_everything_else(nompp):
    # Fails on the old code: `info` exited 2 with the MppError line and showed nothing.
    proc = _info(str(nompp))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    mpp_line = next(ln for ln in out.splitlines() if ln.strip().startswith("MPP"))
    assert (
        "missing: the slide has no microns-per-pixel" in mpp_line and "Fix: pass --mpp" in mpp_line
    )
    assert (
        "dimensions       600 x 600 px" in out and "mm)" not in out
    )  # no size in mm without an MPP
    assert (
        "format           generic-tiff" in out
        and "tissue fraction" in out
        and "stain            brightfield" in out
    )
    assert "0: 600 x 600  downsample 1" in out and "µm/px)" not in out
    assert not proc.stderr.strip()


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_json_without_mpp(nompp):
    # Fails on the old code (exit 2, no JSON).
    proc = _info(str(nompp), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["mpp"] is None and "microns-per-pixel" in info["mpp_missing"]
    assert info["size_mm"] is None and info["dimensions"] == [600, 600]
    assert all(lv["mpp"] is None for lv in info["levels"]) and len(info["levels"]) >= 2
    assert 0.1 < info["tissue_fraction"] < 0.5 and info["stain"]["kind"] == "brightfield"


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_with_mpp_has_no_missing_field(nompp):
    proc = _info(str(nompp), "--mpp", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["mpp"] == {"x": 0.5, "y": 0.5, "source": "override"} and "mpp_missing" not in info
    assert info["size_mm"] == [0.3, 0.3]


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_bad_mpp_is_still_an_error(nompp):
    proc = _info(str(nompp), "--mpp", "-1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Fix:" in proc.stderr
