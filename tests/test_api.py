"""The public Python API: ``import wsi_ocelot`` gives the names README's "From Python" lists,
and README's example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import wsi_ocelot

ROOT = Path(__file__).resolve().parents[1]


def test_api_names_resolve_and_help_lists_them():
    import pydoc

    text = pydoc.render_doc(wsi_ocelot)
    for name in (
        "open_slide",
        "EngineConfig",
        "SlideRunner",
        "run_slide",
        "load_model",
        "run_cohort",
        "collect_jobs",
        "CohortConfig",
        "evaluate",
        "read_cells",
    ):
        assert callable(getattr(wsi_ocelot, name)), name
        assert name in text and name in wsi_ocelot.__all__
        assert getattr(wsi_ocelot, name).__doc__
    assert (
        wsi_ocelot.evaluate is __import__("wsi_ocelot.evaluation", fromlist=["x"]).evaluate_dataset
    )


def test_import_is_light():
    code = "import sys, wsi_ocelot; assert 'torch' not in sys.modules, 'torch imported by import wsi_ocelot'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_readme_from_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\d+ cells, purity 0\.\d{3}, tissue \d+\.\d{3} mm²", proc.stdout), proc.stdout
    assert "Tumor" in proc.stdout and "Background cell" in proc.stdout
    assert (tmp_path / "results" / "example" / "purity.json").is_file()
