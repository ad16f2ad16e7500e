"""The command line as a user meets it: one-line errors without tracebacks, exit codes."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from helpers import RUNTIME_ENV, cpu_run_options, run_cli

from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Fix:" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_is_fast_and_has_example():
    proc = run_cli("tiles", "--help")
    assert proc.returncode == 0 and "example:" in proc.stdout


@pytest.fixture()
def bad_inputs(tmp_path, pattern_slide):
    zero = tmp_path / "zero.svs"
    zero.write_bytes(b"")
    text = tmp_path / "readme.tiff"
    text.write_text("this is not a slide\n")
    cut = tmp_path / "truncated.tiff"
    data = pattern_slide.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    nompp = tmp_path / "nompp.tiff"
    write_pyramidal_tiff(nompp, np.full((512, 512, 3), (215, 130, 185), np.uint8), None)
    return {
        "missing": tmp_path / "missing.svs",
        "directory": tmp_path,
        "zero": zero,
        "text": text,
        "truncated": cut,
        "nompp": nompp,
    }


BAD_INPUTS = [
    ("missing", "no such file"),
    ("directory", "directory"),
    ("zero", "empty"),
    ("text", "not a slide"),
    ("truncated", "truncated"),
    ("nompp", "--mpp"),
]


# `info` shows a slide without MPP and says so (tests/test_info.py); `tiles` refuses it
@pytest.mark.slow  # runs the CLI or Python in a subprocess
@pytest.mark.parametrize(
    "verb,case,needle",
    [(v, c, n) for v in ("info", "tiles") for c, n in BAD_INPUTS if (v, c) != ("info", "nompp")],
)
def test_bad_input_one_line_error(bad_inputs, tmp_path, verb, case, needle):
    path = str(bad_inputs[case])
    extra = ["--out", str(tmp_path / "out")] if verb == "tiles" else []
    proc = run_cli(verb, path, *extra)
    _assert_one_line_error(proc, path, needle)


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_no_mpp_works_with_flag(bad_inputs, tmp_path):
    proc = run_cli("info", str(bad_inputs["nompp"]), "--mpp", "0.25", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["mpp"] == {"x": 0.25, "y": 0.25, "source": "override"}
    proc = run_cli(
        "tiles",
        str(bad_inputs["nompp"]),
        "--mpp",
        "0.25",
        "--out",
        str(tmp_path / "t"),
        "--tile-size",
        "128",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "t" / "metadata.json").read_text())["sample_pairs"]


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_slide_without_tissue_gives_zero_tiles(synth_empty, tmp_path):
    proc = run_cli("tiles", str(synth_empty), "--out", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    assert "0 pairs" in proc.stdout
    assert json.loads((tmp_path / "t" / "metadata.json").read_text())["sample_pairs"] == {}


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_on_synthetic(synth_025):
    proc = run_cli("info", str(synth_025), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["mpp"]["x"] == pytest.approx(0.25) and info["mpp"]["source"] == "openslide"
    assert info["levels"][0]["dimensions"] == [2048, 2048]
    assert 0.2 < info["tissue_fraction"] <= 1.0


def test_output_options_match_the_library_and_reach_the_engine():
    """--ngff and --cells-table on `run` (one slide or a cohort) and `demo`: the same choices as
    the library's, and a wrong value in a config is a one-line error with the fix."""
    from wsi_ocelot.cli import build_parser
    from wsi_ocelot.errors import ConfigError
    from wsi_ocelot.inference.engine import EngineConfig

    parser = build_parser()
    for verb in (["run", "s.svs", "--out", "o"], ["demo"]):
        args = parser.parse_args([*verb, "--ngff", "0.5", "--cells-table", "csv"])
        assert (args.ngff, args.cells_table) == ("0.5", "csv")
        args = parser.parse_args(verb)
        assert (args.ngff, args.cells_table) == ("0.4", None)  # defaults: NGFF 0.4, no table
    for kwargs, needle in (
        ({"ngff": "0.6"}, "0.4, 0.5"),
        ({"cells_table": "xlsx"}, "parquet, csv"),
    ):
        with pytest.raises(ConfigError) as err:
            EngineConfig(**kwargs)
        assert "\n" not in str(err.value) and "Fix:" in str(err.value) and needle in str(err.value)
    proc = run_cli("run", "s.svs", "--out", "o", "--ngff", "0.6")
    assert (
        proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    )


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_export_spatialdata_of_a_folder_without_a_result(tmp_path):
    _assert_one_line_error(run_cli("export-spatialdata", str(tmp_path)), "predictions.zarr")


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_run_needs_model(synth_025, tmp_path):
    proc = run_cli("run", str(synth_025), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "--model", "--model demo")
    assert not (tmp_path / "o").exists()


def _auto(runtime_cache) -> dict[str, str]:
    """The environment of a user without a site default (``auto``), with the session's runtime
    cache (the demo weights' graphs built once for every test that runs ``auto``)."""
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
    return {**env, "WSI_OCELOT_CACHE": str(runtime_cache)}


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_demo_weights_on_a_real_slide_warn_and_leave_a_note(cmu_slide, runtime_cache, tmp_path):
    """``--model demo`` on CMU-1-Small-Region.svs as a new user runs it (``auto``: the fastest
    runtime that keeps the gate, built in the session's runtime cache): a warning at start naming
    the slide, and the synthetic-only note in purity.json, the Zarr attributes, the manifest,
    summary.csv and the report."""
    import csv

    import zarr

    from wsi_ocelot.weights import SYNTHETIC_ONLY_NOTE

    out = tmp_path / "o"
    proc = run_cli("run", str(cmu_slide), *cpu_run_options(out, "demo"), env=_auto(runtime_cache))
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "not synthetic" in ln]
    assert (
        len(warn) == 1
        and cmu_slide.name in warn[0]
        and warn[0].startswith("warning: the demo weights")
    ), proc.stderr
    sid = cmu_slide.stem
    assert json.loads((out / sid / "purity.json").read_text())["model_note"] == SYNTHETIC_ONLY_NOTE
    assert (
        zarr.open_group(str(out / sid / "predictions.zarr"), mode="r").attrs["model"]["note"]
        == SYNTHETIC_ONLY_NOTE
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_note"] == SYNTHETIC_ONLY_NOTE
    assert manifest["slides"][sid]["model_note"] == SYNTHETIC_ONLY_NOTE
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        assert [r["model_note"] for r in csv.DictReader(f)] == [SYNTHETIC_ONLY_NOTE]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert 'class="note"' in report and "synthetic-only weights" in report
    # what ran is recorded: auto's choice, never "auto"
    ran = json.loads((out / sid / "purity.json").read_text())
    assert ran["runtime"] in ("torch", "openvino", "onnxruntime"), ran["runtime"]
    assert ran["precision"] in ("fp32", "bf16", "int8"), ran["precision"]
    assert manifest["slides"][sid]["runtime"] == ran["runtime"]


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_demo_weights_on_a_synthetic_slide_do_not_warn(synth_025, runtime_cache, tmp_path):
    """Our own synthetic slides are what the demo weights are for: no warning, but the note stays."""
    out = tmp_path / "o"
    proc = run_cli(
        "run",
        str(synth_025),
        *cpu_run_options(out, "demo"),
        "--no-report",
        env=_auto(runtime_cache),
    )
    assert proc.returncode == 0, proc.stderr
    assert "not synthetic" not in proc.stderr
    assert json.loads((out / synth_025.stem / "purity.json").read_text())["model_note"]


def test_a_copy_of_the_demo_weights_is_recognised(tmp_path):
    import shutil

    from wsi_ocelot.weights import demo_path, is_demo_weights, weights_note

    copy = tmp_path / "mine.safetensors"
    shutil.copy(demo_path(), copy)
    assert is_demo_weights(copy) and weights_note(copy)
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")  # other bytes: not the demo weights
    assert not is_demo_weights(copy) and weights_note(copy) is None
