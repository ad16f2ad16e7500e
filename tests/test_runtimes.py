"""The forward pass's runtimes (``wsi_ocelot/inference/runtimes/``, docs/runtimes.md): each path
against fp32 torch on a slide, ``auto``'s choice and its cache, the cache's key and integrity,
fallbacks (a runtime that raises at load, a build child that dies), and the one-line errors.

OpenVINO and ONNX Runtime are core dependencies: a missing one fails these tests, nothing is
skipped. The suite's conftest pins ``WSI_OCELOT_RUNTIME=torch`` / ``WSI_OCELOT_PRECISION=fp32``;
tests of ``auto`` delete them. Every build here goes to one session-scoped cache (each
checkpoint built once), except the crash test's, which needs a fresh entry of its own.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from helpers import RUNTIME_ENV

from wsi_ocelot.cli import main
from wsi_ocelot.errors import ConfigError, WsiOcelotError
from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
from wsi_ocelot.inference.runtimes import backends, select, spec
from wsi_ocelot.inference.runtimes.cache import CacheEntry
from wsi_ocelot.inference.runtimes.fidelity import cells_agreement, tissue_agreement
from wsi_ocelot.outputs import open_predictions
from wsi_ocelot.weights import file_sha256

FAST = dict(device="cpu", workers=0, progress=False)
SELECT_LOG = select.log.name
MATCH_UM = 3.0  # the OCELOT matching radius, in µm

#: Cells F1 against fp32 torch on the slide. fp32 paths: the same arithmetic up to summation
#: order, so the bar is the fidelity gate's own (0.99). int8 paths: measured 0.995-0.999 on
#: this slide (~480 cells) with the demo weights on a 2-core AVX2 AMD EPYC (7-bit weights, no
#: VNNI), and 0.994-0.996 on the gate's tiles; 0.97 leaves room for another CPU's kernels
#: (VNNI, full-range weights) and still catches a broken quantisation: full-range weights on
#: AVX2 cost 0.72-0.85 (graphs.quantize_int8), and an untrained checkpoint, whose peaks sit
#: on a flat probability map, gives ~0.25 (why these tests use the demo weights, not tiny_ckpt).
MIN_F1 = {"fp32": 0.99, "int8": 0.97}
PATHS = [
    ("openvino", "fp32"),
    ("openvino", "int8"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
]


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def shared_cache(runtime_cache, monkeypatch) -> Path:
    monkeypatch.setenv("WSI_OCELOT_CACHE", str(runtime_cache))
    return runtime_cache


@pytest.fixture
def no_site_default(monkeypatch) -> None:
    """``auto`` as a user without WSI_OCELOT_RUNTIME / WSI_OCELOT_PRECISION gets it."""
    for name in RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)


def _stub_subprocess(monkeypatch, popen) -> None:
    """Replace ``subprocess`` in select.py only (where the build children start)."""
    monkeypatch.setattr(
        select,
        "subprocess",
        types.SimpleNamespace(
            Popen=popen, TimeoutExpired=subprocess.TimeoutExpired, DEVNULL=subprocess.DEVNULL
        ),
    )


def _no_child(monkeypatch) -> None:
    """Fail the test if a build child is started (the cache must be reused)."""

    def popen(*args, **kwargs):
        raise AssertionError(f"a build child was started: {args}")

    _stub_subprocess(monkeypatch, popen)


def _count_children(monkeypatch) -> list:
    """Let build children run, and count them."""
    calls: list = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    _stub_subprocess(monkeypatch, popen)
    return calls


def _entry(runner: SlideRunner) -> CacheEntry:
    return select._entry_for(runner.predictor.model, runner.info, runner.model_path)


def _build_json(runner: SlideRunner) -> dict:
    return json.loads(_entry(runner).build_json.read_text(encoding="utf-8"))


def _auto_runner(cache: Path, model, **kw) -> SlideRunner:
    """A runner made under ``auto`` (no site default) with ``cache``, from a session fixture."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSI_OCELOT_CACHE", str(cache))
        for name in RUNTIME_ENV:
            mp.delenv(name, raising=False)
        return SlideRunner(model, EngineConfig(**FAST, **kw))


def _result(out_dir: Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Cells (x, y, class, prob in level-0 px), the level-0 tissue map, the store's root
    attributes and purity.json of one slide's result."""
    with open_predictions(out_dir / "predictions.zarr") as store:
        c = store.cells()
        tissue = np.asarray(store.tissue(0)[:])
        attrs = store.attrs
    pts = (
        np.stack([c["x"], c["y"], c["class"], c["prob"]], axis=1).astype(np.float64)
        if len(c["x"])
        else np.zeros((0, 4))
    )
    return pts, tissue, attrs, json.loads((out_dir / "purity.json").read_text(encoding="utf-8"))


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# -- session builds -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_auto(runtime_cache) -> SlideRunner:
    """The demo weights under ``auto``, in the shared cache: every candidate path timed, the
    fastest gated until one keeps auto's margins (one child). A path left ``timed`` is gated
    when a test below asks for it by name."""
    return _auto_runner(runtime_cache, "demo")


@pytest.fixture(scope="session")
def tiny_fp32(runtime_cache, tiny_ckpt) -> SlideRunner:
    """The tiny checkpoint's fp32 paths (OpenVINO, ONNX Runtime), each gated (asked for by name,
    one child each), then ``auto`` runtime at ``--precision fp32`` over them (no child)."""
    for runtime in ("openvino", "onnxruntime"):
        _auto_runner(runtime_cache, tiny_ckpt, runtime=runtime, precision="fp32")
    return _auto_runner(runtime_cache, tiny_ckpt, precision="fp32")


@pytest.fixture(scope="session")
def demo_reference(synth_05, tmp_path_factory):
    """fp32 torch's result on the slide: what every other path is compared to."""
    runner = SlideRunner("demo", EngineConfig(**FAST, runtime="torch", precision="fp32"))
    assert (runner.runtime.runtime, runner.runtime.precision, runner.runtime.reason) == (
        "torch",
        "fp32",
        "asked for",
    )
    res = runner.run(synth_05, tmp_path_factory.mktemp("reference"))
    return res.out_dir, *_result(res.out_dir)


# -- 1. each path against fp32 torch on a slide -------------------------------------------------
@pytest.mark.slow  # with the demo build and the reference run: ~1.5 min on a 2-core CPU
@pytest.mark.parametrize("runtime, precision", PATHS)
def test_each_path_keeps_fp32_torch_cells_on_a_slide(
    runtime, precision, demo_auto, demo_reference, synth_05, shared_cache, tmp_path, monkeypatch
):
    _, ref_pts, ref_tissue, ref_attrs, ref_purity = demo_reference
    assert ref_purity["runtime"] == "torch" and ref_purity["precision"] == "fp32"
    assert (
        ref_attrs["runtime"]["runtime"] == "torch" and ref_attrs["runtime"]["precision"] == "fp32"
    )
    assert len(ref_pts) >= 300  # enough cells for an F1 to mean something

    children = _count_children(monkeypatch)
    runner = SlideRunner("demo", EngineConfig(**FAST, runtime=runtime, precision=precision))
    # demo_auto timed every path and gated the fastest: a path it left timed is gated now, once
    assert len(children) <= 1
    assert _build_json(runner)["paths"][f"{runtime} {precision}"]["status"] == "ok"
    choice = runner.runtime
    assert (choice.runtime, choice.precision, choice.reason) == (runtime, precision, "asked for")
    assert choice.version == spec.runtime_version(runtime)
    backend = runner.predictor.backend
    assert backend is not None and (backend.runtime, backend.precision) == (runtime, precision)

    res = runner.run(synth_05, tmp_path)
    pts, tissue, attrs, purity = _result(res.out_dir)
    mpp = attrs["slide"]["mpp"]
    agree = cells_agreement(ref_pts, pts, MATCH_UM / mpp)
    assert agree["cells_f1"] >= MIN_F1[precision], agree
    assert abs(len(pts) - len(ref_pts)) <= (1 - MIN_F1[precision]) * len(ref_pts), agree
    # the tissue graph runs fp32 on every path (int8 quantises the cell graph only)
    t = tissue_agreement(ref_tissue, tissue)
    assert (
        t["tissue_mean_abs"] <= spec.FIDELITY["tissue_mean_abs"]
        and t["ca_agreement"] >= spec.FIDELITY["ca_agreement"]
    ), t
    # what ran is recorded: purity.json (top-level keys and the detail) and the store's attributes
    assert purity["runtime"] == runtime and purity["precision"] == precision
    assert (
        purity["runtime_detail"]["version"] == choice.version
        and purity["runtime_detail"]["reason"] == "asked for"
    )
    assert attrs["runtime"]["runtime"] == runtime and attrs["runtime"]["precision"] == precision
    assert attrs["runtime"]["fidelity"]["cells_f1"] == choice.fidelity["cells_f1"]


# -- 2. auto ------------------------------------------------------------------------------------
@pytest.mark.slow  # shares the demo build with the test above
def test_auto_takes_the_fastest_gated_path_and_builds_once(
    demo_auto, shared_cache, no_site_default, monkeypatch
):
    choice = demo_auto.runtime
    data = _build_json(demo_auto)
    expected = {"openvino int8", "openvino fp32", "onnxruntime int8", "onnxruntime fp32"}
    if spec.cpu_has_bf16():
        expected |= {"openvino bf16"}  # torch bf16 is not auto's where OpenVINO bf16 is
    assert (
        set(data["paths"]) >= expected
    )  # every candidate but fp32 torch (the reference) has a record
    ref_ms = data["reference"]["ms_per_cell_tile"]
    assert ref_ms > 0
    for name in expected:
        res = data["paths"][name]
        # both runtimes are core dependencies: each path builds here; each is timed but ONNX
        # Runtime's where OpenVINO's at its precision kept auto's margins or was not gated (a
        # test above may have gated it since, by name)
        if res["status"] == "reserve":
            other = data["paths"][res["reserve_for"]]
            assert name.startswith("onnxruntime") and res["reserve_for"] == name.replace(
                "onnxruntime", "openvino"
            )
            assert other["status"] == "timed" or spec.auto_may_take(other), (name, other)
            continue
        assert res["status"] in ("ok", "timed"), (name, res)
        assert res["ms_per_cell_tile"] > 0 and res["cell_ms"] > 0
        if res["status"] == "timed":
            assert "fidelity" not in res
            continue
        fid = res["fidelity"]
        assert {
            "cells_f1",
            "cells_reference",
            "purity_delta",
            "tissue_mean_abs",
            "ca_agreement",
            "passes",
        } <= set(fid), (name, fid)
        assert fid["cells_reference"] > 0 and isinstance(fid["passes"], bool)
        assert fid["passes"] == (
            fid["cells_f1"] >= spec.FIDELITY["cells_f1"]
            and fid["tissue_mean_abs"] <= spec.FIDELITY["tissue_mean_abs"]
            and fid["ca_agreement"] >= spec.FIDELITY["ca_agreement"]
        )
    # the entry's files are all recorded with their hashes (what CacheEntry.read checks)
    folder = _entry(demo_auto).dir
    assert (
        set(data["files"])
        == {p.name for p in folder.glob("*.onnx")} | {p.name for p in folder.glob("*.npz")}
        >= {"tissue.onnx", "cell.onnx", "cell.int8.onnx", "reference.npz"}
    )

    # auto's rule, built lazily: the fastest path that keeps auto's margins; every path faster
    # than it was gated (and missed them); a path left timed is slower than the choice (or fp32)
    assert choice.reason.startswith("auto"), choice
    speed = {
        name: data["paths"][name]["ms_per_cell_tile"]
        for name in expected
        if data["paths"][name]["status"] != "reserve"
    }
    chosen = f"{choice.runtime} {choice.precision}"
    bar = speed[chosen] if chosen in speed else ref_ms
    for name in speed:
        res = data["paths"][name]
        if speed[name] < bar:
            assert res["status"] == "ok" and not spec.auto_may_take(res), (name, res, chosen)
        if res["status"] == "timed":
            assert speed[name] >= bar, (name, speed, chosen)
    if chosen in speed:
        assert spec.auto_may_take(data["paths"][chosen]) and speed[chosen] < ref_ms
        assert choice.fidelity == data["paths"][chosen]["fidelity"]
        assert (
            demo_auto.predictor.backend is not None
            and demo_auto.predictor.backend.runtime == choice.runtime
        )
    else:
        assert (choice.runtime, choice.precision) == (
            "torch",
            "fp32",
        ) and "no faster path" in choice.reason

    # a second runner loads what the first built: no child process
    _no_child(monkeypatch)
    again = SlideRunner("demo", EngineConfig(**FAST))
    assert (again.runtime.runtime, again.runtime.precision, again.runtime.reason) == (
        choice.runtime,
        choice.precision,
        choice.reason,
    )
    assert _build_json(again) == data


# -- 3. the cache's key and integrity -------------------------------------------------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_cache_follows_the_checkpoint_and_never_trusts_a_tampered_file(
    tiny_fp32, tiny_ckpt, shared_cache, tmp_path, monkeypatch
):
    children = _count_children(monkeypatch)
    kw = dict(**FAST, runtime="onnxruntime", precision="fp32")
    first = _entry(tiny_fp32)

    # the same bytes under another name: the same entry, nothing built
    same = shutil.copy(tiny_ckpt, tmp_path / "renamed.safetensors")
    runner = SlideRunner(same, EngineConfig(**kw))
    assert (
        _entry(runner).dir == first.dir
        and runner.runtime.runtime == "onnxruntime"
        and children == []
    )

    # other weights: another entry, built
    other_ckpt = write_tiny_checkpoint(tmp_path / "other.safetensors", tilt=False)
    other = SlideRunner(other_ckpt, EngineConfig(**kw))
    entry = _entry(other)
    assert len(children) == 1 and entry.dir != first.dir
    assert other.runtime.runtime == "onnxruntime" and other.runtime.precision == "fp32"
    for runner_, ckpt in ((tiny_fp32, tiny_ckpt), (other, other_ckpt)):
        assert _build_json(runner_)["material"]["checkpoint_sha256"] == file_sha256(ckpt)
    assert first.build_json.is_file()  # the first checkpoint's entry is untouched

    # a graph changed behind the cache's back: detected, the entry cleared, never loaded
    graph = entry.dir / "cell.onnx"
    blob = bytearray(graph.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\x00" * 64
    graph.write_bytes(bytes(blob))
    with entry.locked():
        data = entry.read()
    assert data["paths"] == {} and "reference" not in data
    assert not graph.exists() and not entry.build_json.exists()
    # ... and rebuilt by the next runner
    rebuilt = SlideRunner(other_ckpt, EngineConfig(**kw))
    assert len(children) == 2 and rebuilt.runtime.runtime == "onnxruntime"
    data = _build_json(rebuilt)
    assert (
        data["files"]["cell.onnx"] == file_sha256(graph)
        and data["paths"]["onnxruntime fp32"]["status"] == "ok"
    )
    with entry.locked():
        assert entry.read()["paths"] == data["paths"]  # trusted again


# -- 4. a runtime that raises at load --------------------------------------------------------------
def _raising_for(runtimes: set[str], calls: list):
    real = backends.open_backend

    def open_backend(runtime, precision, graphs, threads, int8_float=None):
        calls.append((runtime, precision))
        if runtime in runtimes:
            raise RuntimeError(f"simulated {runtime} load failure")
        return real(runtime, precision, graphs, threads, int8_float)

    return open_backend


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_a_runtime_that_raises_at_load_falls_back_with_one_warning(
    tiny_fp32, tiny_ckpt, shared_cache, monkeypatch, caplog
):
    _no_child(monkeypatch)  # tiny_fp32 built both fp32 paths
    calls: list = []

    # explicit --runtime openvino --precision fp32: fp32 torch, one warning
    monkeypatch.setattr(select, "open_backend", _raising_for({"openvino"}, calls))
    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        runner = SlideRunner(tiny_ckpt, EngineConfig(**FAST, runtime="openvino", precision="fp32"))
    assert calls == [("openvino", "fp32")]
    assert (runner.runtime.runtime, runner.runtime.precision) == (
        "torch",
        "fp32",
    ) and runner.predictor.backend is None
    assert runner.runtime.reason == "fallback: openvino fp32 failed to load"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == SELECT_LOG and r.levelno >= logging.WARNING
    ]
    assert (
        len(warnings) == 1
        and "openvino fp32 failed to load" in warnings[0]
        and "simulated openvino load failure" in warnings[0]
    )
    assert "\n" not in warnings[0]

    # auto: the next path. The build's speeds are noisy on a shared 2-core CPU (the tiny model's
    # paths are all within a few ms of fp32 torch), so fix the order: OpenVINO, ONNX Runtime, torch.
    real_gate = select.gate_results

    def ordered(*args, **kwargs):
        entry, data = real_gate(*args, **kwargs)
        data = copy.deepcopy(data)
        data["reference"]["ms_per_cell_tile"] = 1000.0
        data["paths"]["openvino fp32"]["ms_per_cell_tile"] = 10.0
        data["paths"]["onnxruntime fp32"]["ms_per_cell_tile"] = 20.0
        return entry, data

    monkeypatch.setattr(select, "gate_results", ordered)
    for name in RUNTIME_ENV:
        monkeypatch.delenv(name)
    for failing, expect, n_warn in (
        ({"openvino"}, ("onnxruntime", "fp32"), 1),
        ({"openvino", "onnxruntime"}, ("torch", "fp32"), 2),
    ):
        calls.clear()
        caplog.clear()
        monkeypatch.setattr(select, "open_backend", _raising_for(failing, calls))
        with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
            runner = SlideRunner(tiny_ckpt, EngineConfig(**FAST, precision="fp32"))
        assert (runner.runtime.runtime, runner.runtime.precision) == expect, runner.runtime
        assert calls == [("openvino", "fp32"), ("onnxruntime", "fp32")]
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == SELECT_LOG and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == n_warn and all(
            "failed to load" in w and "trying the next path" in w for w in warnings
        ), warnings
        if expect[0] == "torch":
            assert (
                runner.predictor.backend is None
                and runner.runtime.reason
                == "fallback: openvino fp32, onnxruntime fp32 failed to load"
            )
        else:
            assert (
                runner.predictor.backend.runtime == "onnxruntime"
                and runner.runtime.reason.startswith("auto")
            )


@pytest.mark.slow  # builds the gate of one path in a child
@pytest.mark.skipif(
    not spec.cpu_has_bf16(), reason="torch bf16 on the CPU needs AVX-512 BF16 or AMX"
)
def test_torch_bf16_asked_for_runs_in_torch(tiny_ckpt, shared_cache):
    """``--runtime torch --precision bf16`` is gated like any path and then runs in torch itself
    (nothing to load): bf16, as asked, with its gate's figures."""
    runner = SlideRunner(tiny_ckpt, EngineConfig(**FAST, runtime="torch", precision="bf16"))
    choice = runner.runtime
    assert (choice.runtime, choice.precision, choice.reason) == ("torch", "bf16", "asked for")
    assert runner.predictor.backend is None and choice.fidelity is not None
    assert _build_json(runner)["paths"]["torch bf16"]["status"] == "ok"


# -- 5. a runtime that does not import ---------------------------------------------------------------
def test_a_runtime_that_does_not_import_is_one_line_naming_the_fix(
    tiny_ckpt, synth_05, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    out = tmp_path / "res"
    code = main(
        [
            "run",
            str(synth_05),
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            "--runtime",
            "openvino",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert code == 2, err
    assert (
        len(lines) == 1
        and "--runtime openvino" in lines[0]
        and "Fix: pip install openvino" in lines[0]
    ), err
    # raised before any slide ran: nothing recorded, no slide folder
    assert not (out / "manifest.json").exists() and not (out / synth_05.stem).exists()
    # the API says the same
    with pytest.raises(WsiOcelotError, match="pip install openvino"):
        SlideRunner(tiny_ckpt, EngineConfig(**FAST, runtime="openvino", precision="fp32"))


# -- 6. a build child that dies ----------------------------------------------------------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_a_crashing_build_child_marks_its_path_crashed_and_the_rest_go_on(
    tiny_ckpt, tmp_path, no_site_default, monkeypatch, caplog
):
    monkeypatch.setenv(
        "WSI_OCELOT_CACHE", str(tmp_path / "cache")
    )  # a fresh entry: the shared one is built already
    monkeypatch.setenv(
        "WSI_OCELOT_BUILD_CRASH", "openvino fp32"
    )  # build.py's fault injection (OpenVINO issue 35943)
    children = _count_children(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        runner = SlideRunner(tiny_ckpt, EngineConfig(**FAST, precision="fp32"))
    assert len(children) == 2  # the child that died in openvino fp32, then one for the rest
    data = _build_json(runner)
    crashed = data["paths"]["openvino fp32"]
    assert crashed["status"] == "crashed" and "SIGFPE" in crashed["error"], crashed
    # the rest went on: timed, and gated where faster than fp32 torch (the tiny model's paths
    # are all within a few ms of it, so either may happen)
    rest = data["paths"]["onnxruntime fp32"]
    assert rest["status"] in ("ok", "timed") and rest["ms_per_cell_tile"] > 0, rest
    assert rest["status"] == "timed" or rest["fidelity"]["passes"]
    assert "reference" in data
    assert (runner.runtime.runtime, runner.runtime.precision) in {
        ("onnxruntime", "fp32"),
        ("torch", "fp32"),
    }
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == SELECT_LOG and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and "openvino fp32" in warnings[0] and "SIGFPE" in warnings[0], (
        warnings
    )
    # the crash is remembered: the next runner starts no child and skips that path
    _no_child(monkeypatch)
    again = SlideRunner(tiny_ckpt, EngineConfig(**FAST, precision="fp32"))
    assert again.runtime.runtime != "openvino"
    # asked for explicitly, the crashed path falls back to fp32 torch with one warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        explicit = SlideRunner(
            tiny_ckpt, EngineConfig(**FAST, runtime="openvino", precision="fp32")
        )
    assert (explicit.runtime.runtime, explicit.runtime.precision) == ("torch", "fp32")
    assert explicit.runtime.reason == "fallback: openvino fp32 crashed"
    assert (
        len([r for r in caplog.records if r.name == SELECT_LOG and r.levelno >= logging.WARNING])
        == 1
    )


# -- 7. options that cannot run ---------------------------------------------------------------------
def test_bf16_without_cpu_support_and_paths_a_runtime_lacks(
    tiny_ckpt, synth_05, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(select, "cpu_has_bf16", lambda: False)
    with pytest.raises(WsiOcelotError) as info:
        SlideRunner(tiny_ckpt, EngineConfig(**FAST, runtime="torch", precision="bf16"))
    line = info.value.one_line()
    assert (
        "--precision bf16" in line
        and "no bf16 instructions" in line
        and "Fix: use --precision auto, fp32 or int8" in line
    )
    assert "\n" not in line
    # the CLI: that line, once, before any slide
    out = tmp_path / "res"
    code = main(
        [
            "run",
            str(synth_05),
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and lines == [f"error: {line}"]
    assert not (out / "manifest.json").exists()

    # ONNX Runtime has no bf16 path: the config says so (any CPU)
    with pytest.raises(ConfigError) as info:
        EngineConfig(runtime="onnxruntime", precision="bf16")
    line = info.value.one_line()
    assert (
        "--runtime onnxruntime has no bf16 path" in line
        and "Fix: use --precision int8 or fp32" in line
    )
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        EngineConfig(runtime="tensorrt")
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        EngineConfig(precision="fp16")


def test_int8_keeps_the_high_resolution_convolutions_in_float(tiny_ckpt, tmp_path):
    """int8 leaves in float every convolution at stride FLOAT_STRIDE (4) or finer: the encoder's
    stem and first stage, and the decoder's low-level projection, separable fusion convolution and
    head; every other convolution (stages 2-4, ASPP) reads quantised (QDQ) weights."""
    import onnx

    from wsi_ocelot.inference.runtimes.graphs import (
        FLOAT_STRIDE,
        calibration_pairs,
        export_onnx,
        quantize_int8,
    )
    from wsi_ocelot.model.checkpoint import load_model

    assert FLOAT_STRIDE == 4
    model, info = load_model(str(tiny_ckpt), device="cpu")
    model.eval()
    tile = info.geometry.tile_size
    graphs = export_onnx(model, tile, tmp_path)
    cal = calibration_pairs(info, 2, 1)
    tissue = backends.OnnxRuntimeBackend(graphs, "fp32", 1).tissue(cal.tissue)
    inj = cal.injection(model, tissue)
    feeds = [{"cell": cal.cell[i : i + 1], "injection": inj[i : i + 1]} for i in range(2)]
    out = quantize_int8(graphs["cell"], tmp_path / "cell.int8.onnx", feeds, reduce_range=False)

    g = onnx.load(str(out)).graph
    node_of = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    in_float = {
        n.name
        for n in convs
        if (w := node_of.get(n.input[1])) is None or w.op_type != "DequantizeLinear"
    }
    # the tiny checkpoint's ResNet-18 encoder and smp's DeepLabV3+ decoder
    assert in_float == {
        "/encoder/conv1/Conv",
        *(f"/encoder/layer1/layer1.{b}/conv{c}/Conv" for b in (0, 1) for c in (1, 2)),
        "/block1/block1.0/Conv",
        "/block2/block2.0/block2.0.0/Conv",
        "/block2/block2.0/block2.0.1/Conv",
        "/head/head.0/Conv",
    }
    quantised = {n.name for n in convs} - in_float
    assert any("/layer2/" in c for c in quantised) and any("/aspp/" in c for c in quantised)
    # a Relu after a quantised convolution is folded into the range of its output: no Relu reads
    # a Q/DQ pair of a quantised convolution's output (OpenVINO ran those as stand-alone steps)

    def source(name: str, *ops: str) -> onnx.NodeProto | None:
        n = node_of.get(name)
        for op in ops:
            if n is None or n.op_type != op:
                return None
            n = node_of.get(n.input[0])
        return n

    after_quantised = [
        n.name
        for n in g.node
        if n.op_type == "Relu"
        and (c := source(n.input[0], "DequantizeLinear", "QuantizeLinear")) is not None
        and c.name in quantised
    ]
    assert after_quantised == []
    relus = lambda graph: sum(n.op_type == "Relu" for n in graph.node)  # noqa: E731
    assert relus(g) < relus(onnx.load(str(graphs["cell"])).graph)  # some were folded


def test_openvino_int8_float_tail_follows_the_gate(monkeypatch):
    """On a bf16 CPU OpenVINO int8 tries its cell graph's float parts in bf16 first, then fp32;
    the tissue graph stays fp32. Elsewhere (and for every other path) there is one form."""
    from wsi_ocelot.inference.runtimes import build

    monkeypatch.setattr(build, "cpu_has_bf16", lambda: True)
    assert build._int8_float_to_try("openvino", "int8") == ["bf16", "fp32"]
    assert build._int8_float_to_try("onnxruntime", "int8") == [None]
    assert build._int8_float_to_try("openvino", "bf16") == [None]
    monkeypatch.setattr(build, "cpu_has_bf16", lambda: False)
    assert build._int8_float_to_try("openvino", "int8") == [None]


def test_cpu_bf16_leaves_the_tissue_graph_fp32(tiny_ckpt):
    """torch bf16 on the CPU is the cell graph's: the tissue probabilities are fp32 torch's, bit
    for bit, while the cell graph's differ (it ran under bf16 autocast)."""
    import torch

    from wsi_ocelot.inference.predictor import Predictor
    from wsi_ocelot.model.checkpoint import load_model

    model, info = load_model(str(tiny_ckpt), device="cpu")
    t = info.geometry.tile_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, t, t), generator=gen, dtype=torch.uint8)
    fp32 = Predictor(model, torch.device("cpu"))
    bf16 = Predictor(model, torch.device("cpu"), cpu_bf16=True)
    tissue = fp32.tissue_probs(x)
    assert torch.equal(bf16.tissue_probs(x), tissue)
    crop = tissue[:, :, : t // 4, : t // 4]
    assert not torch.equal(bf16.cell_probs(x, crop), fp32.cell_probs(x, crop))


def test_auto_asks_margins_of_the_gate():
    """A path that keeps the gate's cells F1 of 0.99 but not auto's 0.995, or whose tumour share on
    the gate's tiles moved more than 0.0025 either way, is not auto's choice."""
    assert spec.FIDELITY["cells_f1"] <= 0.993 < spec.FIDELITY["cells_f1_auto"] <= 0.996
    assert spec.FIDELITY["purity_auto"] == 0.0025
    fid = {"passes": True, "cells_f1": 0.996, "purity_delta": 0.0009}
    ok = {"status": "ok", "fidelity": fid}
    assert spec.auto_may_take(ok)
    assert not spec.auto_may_take({**ok, "fidelity": {**fid, "cells_f1": 0.993}})
    assert not spec.auto_may_take({**ok, "fidelity": {**fid, "purity_delta": 0.0028}})
    assert not spec.auto_may_take({**ok, "fidelity": {**fid, "purity_delta": -0.0028}})
    assert spec.auto_may_take({**ok, "fidelity": {**fid, "purity_delta": -0.0025}})
    assert not spec.auto_may_take({**ok, "fidelity": {**fid, "passes": False}})
    assert not spec.auto_may_take({"status": "crashed"})


def test_auto_leaves_torch_bf16_to_openvino():
    """On a bf16 CPU with OpenVINO, auto/auto does not build torch bf16 (OpenVINO runs the same
    precision faster); it stays a candidate when bf16 is asked for, and runs when asked by name."""
    c = select._candidates
    assert ("openvino", "bf16") in c("auto", "auto", True)
    assert ("torch", "bf16") not in c("auto", "auto", True)
    assert c("auto", "bf16", True) == [("openvino", "bf16"), ("torch", "bf16")]
    assert c("torch", "bf16", True) == [("torch", "bf16")]
    assert c("auto", "auto", False)[-1] == ("torch", "fp32")
    assert ("torch", "bf16") not in c("auto", "auto", False)  # no native bf16: never


def test_gate_pairs_are_rendered_once_and_never_trusted_damaged(tiny_ckpt, tmp_path, monkeypatch):
    """The gate's synthetic pairs are kept per geometry (every checkpoint of it shares them): a
    second call renders nothing; a damaged file is rendered anew; another seed is another file."""
    from wsi_ocelot.inference.runtimes import cache
    from wsi_ocelot.model.checkpoint import load_model

    monkeypatch.setenv("WSI_OCELOT_CACHE", str(tmp_path))
    _, info = load_model(str(tiny_ckpt), device="cpu")
    rendered: list = []
    real = cache.render_pairs

    def counting(*args):
        rendered.append(args[1:3])
        return real(*args)

    monkeypatch.setattr(cache, "render_pairs", counting)
    first = cache.cached_pairs(info, 6, 7)
    t = info.geometry.tile_size
    # PER_CONTEXT (4) cell tiles to a context: 6 cell tiles in 2 contexts
    assert first.cell.shape == (6, 3, t, t) and first.tissue.shape == (2, 3, t, t)
    assert first.cell.dtype == np.float32 and list(first.context) == [0, 0, 0, 0, 1, 1]
    assert 0.0 <= first.cell.min() and first.cell.max() <= 1.0 and rendered == [(6, 7)]
    again = cache.cached_pairs(info, 6, 7)
    assert rendered == [(6, 7)]  # read back, not rendered
    assert all(
        np.array_equal(getattr(again, k), getattr(first, k))
        for k in ("cell", "tissue", "context", "offset")
    )

    (kept,) = (tmp_path / "runtimes" / "pairs").glob("*.npz")
    with np.load(kept) as z:
        parts = {k: z[k] for k in z.files}
    parts["cell"][0, 0, 0] ^= 255  # one pixel changed behind the cache's back
    np.savez(kept, **parts)
    damaged = cache.cached_pairs(info, 6, 7)
    assert rendered == [(6, 7), (6, 7)] and np.array_equal(damaged.cell, first.cell)
    cache.cached_pairs(info, 6, 8)
    assert rendered[-1] == (6, 8) and len(list(kept.parent.glob("*.npz"))) == 2
    # rendered by threads, the same pixels as by one
    one, two = real(info, 3, 7, 1), real(info, 3, 7, 2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


def test_each_gate_cell_tile_lies_in_its_context_where_its_offset_says(tiny_ckpt):
    """A context's tissue prediction serves several cell tiles (graphs.PER_CONTEXT), each cropped
    at its offset, as the engine crops a tissue tile's: the cell tile's pixels, shrunk to the
    context's scale, match the context's region at that offset, and not the region at the
    offset's mirror (x and y swapped)."""
    from wsi_ocelot.inference.runtimes.graphs import render_pairs
    from wsi_ocelot.model.checkpoint import load_model

    _, info = load_model(str(tiny_ckpt), device="cpu")
    g = info.geometry
    f = g.context_factor
    tissue, cell, context, offset = render_pairs(info, 6, 3)
    T = g.tile_size
    r = T // f  # the cell tile's side in context pixels
    seen = 0
    for i in range(len(cell)):
        small = cell[i].reshape(r, f, r, f, 3).mean(axis=(1, 3))

        def region(x: float, y: float, i: int = i) -> np.ndarray:
            x0, y0 = round(x * T - r / 2), round(y * T - r / 2)
            return tissue[context[i], y0 : y0 + r, x0 : x0 + r].astype(float)

        ox, oy = offset[i]
        assert r / 2 <= ox * T <= T - r / 2 and r / 2 <= oy * T <= T - r / 2  # inside it
        here = np.corrcoef(region(ox, oy).ravel(), small.ravel())[0, 1]
        assert here > 0.8, (i, here)
        if abs(ox - oy) * T > r:  # the mirror is another region
            assert here > np.corrcoef(region(oy, ox).ravel(), small.ravel())[0, 1] + 0.2
            seen += 1
    assert seen >= 2


def test_the_kept_reference_follows_the_pairs(tiny_ckpt, tmp_path, monkeypatch):
    """fp32 torch's outputs on the gate's pairs are kept in the entry (``reference.npz``) and read
    back for the same pairs; other pairs (a changed generator: another key) are run anew."""
    import dataclasses

    from wsi_ocelot.inference.runtimes import build, cache
    from wsi_ocelot.model.checkpoint import load_model

    monkeypatch.setenv("WSI_OCELOT_CACHE", str(tmp_path / "cache"))
    model, info = load_model(str(tiny_ckpt), device="cpu")
    model.eval()
    pairs = cache.cached_pairs(info, 2, 7)
    assert len(pairs.key) == 64
    first = build._Reference.get(tmp_path, model, info, pairs, True)
    assert first.record is not None and first.record["ms_per_cell_tile"] > 0  # computed
    assert (
        first.tissue.dtype == np.uint8
        and first.tissue.shape == pairs.tissue.shape[:1] + pairs.tissue.shape[2:]
        and len(first.injection) == len(pairs.cell)
    )
    again = build._Reference.get(tmp_path, model, info, pairs, True)
    assert again.record is None  # read back
    assert np.array_equal(again.points, first.points) and np.array_equal(again.tissue, first.tissue)
    assert np.array_equal(again.injection, first.injection)
    other = dataclasses.replace(pairs, key="another generator's pairs")
    assert build._Reference.get(tmp_path, model, info, other, True).record is not None


def test_an_entry_drops_files_build_json_does_not_list(tmp_path):
    """A file a build left in the entry without build.json listing it (a child that died) is
    removed when the entry is read; the listed ones stay."""
    entry = CacheEntry({"k": 1}, root=tmp_path)
    with entry.locked():
        data = entry.read()
        (entry.dir / "cell.onnx").write_bytes(b"graph")
        entry.write(data)
        (entry.dir / "reference.npz").write_bytes(b"left by a dead child")
        (entry.dir / "cell.int8.onnx").write_bytes(b"half written")
        data = entry.read()
    assert set(data["files"]) == {"cell.onnx"}
    assert sorted(p.name for p in entry.dir.iterdir()) == ["build.json", "cell.onnx"]


@pytest.mark.parametrize(
    "left",
    [
        {"status": "timed", "ms_per_cell_tile": 20.0},
        {"status": "reserve", "reserve_for": "openvino fp32"},
    ],
    ids=["timed", "reserve"],
)
def test_auto_gates_a_timed_path_when_the_gated_ones_fail_to_load(
    tiny_ckpt, monkeypatch, caplog, left
):
    """auto leaves paths slower than its choice ``timed`` (speed only), and ONNX Runtime's
    untimed (a ``reserve``) while OpenVINO's path at its precision keeps auto's margins. If every
    gated path then fails to load, the fastest timed path, else the reserve, is gated (asked for
    as "each") before it may run."""
    from wsi_ocelot.model.checkpoint import load_model

    for name in RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)
    model, info = load_model(str(tiny_ckpt), device="cpu")
    fid = {"passes": True, "cells_f1": 1.0, "purity_delta": 0.0}
    data = {
        "reference": {"ms_per_cell_tile": 100.0},
        "paths": {
            "openvino fp32": {"status": "ok", "fidelity": fid, "ms_per_cell_tile": 10.0},
            "onnxruntime fp32": dict(left),
        },
    }
    calls: list = []

    def gate_results(model, info, checkpoint, paths, threads, mode="each"):
        calls.append((paths, mode))
        if mode == "each":  # the gate of the timed path, as a child would record it
            data["paths"]["onnxruntime fp32"] = {
                "status": "ok",
                "fidelity": fid,
                "ms_per_cell_tile": 20.0,
            }
        return types.SimpleNamespace(dir=Path("/nonexistent")), data

    loads: list = []

    def open_backend(runtime, precision, graphs, threads, int8_float=None):
        loads.append(runtime)
        if runtime == "openvino":
            raise RuntimeError("simulated openvino load failure")
        return types.SimpleNamespace(runtime=runtime, precision=precision)

    monkeypatch.setattr(select, "gate_results", gate_results)
    monkeypatch.setattr(select, "open_backend", open_backend)
    import torch

    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        choice, backend = select.choose_runtime(
            model, info, str(tiny_ckpt), torch.device("cpu"), precision="fp32", threads=1
        )
    assert (choice.runtime, choice.precision) == (
        "onnxruntime",
        "fp32",
    ) and backend.runtime == "onnxruntime"
    assert choice.reason.startswith("auto") and choice.fidelity == fid
    assert calls == [
        ([("openvino", "fp32"), ("onnxruntime", "fp32"), ("torch", "fp32")], "auto"),
        ([("onnxruntime", "fp32")], "each"),
    ]
    assert loads == ["openvino", "onnxruntime"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "openvino fp32 failed to load" in warnings[0]


@pytest.mark.slow  # a build child's work in process: ~10 s each on 2 cores
@pytest.mark.parametrize(
    "openvino_f1, tried",
    [(None, False), (0.992, True), (0.95, False)],
    ids=["keeps", "near", "far"],
)
def test_an_auto_build_times_onnxruntime_only_where_openvino_misses(
    tiny_ckpt, shared_cache, tmp_path, monkeypatch, openvino_f1, tried
):
    """The build child in ``auto`` mode: ONNX Runtime's path is a reserve for OpenVINO's at its
    precision (both run the same graph, OpenVINO faster on every CPU measured). It is neither
    loaded nor timed while OpenVINO's keeps auto's margins (recorded ``reserve``) or misses them
    by more than the two runtimes differ (``spec.RESERVE_SLACK``), and timed and gated when
    OpenVINO's misses them by little."""
    import torch

    from wsi_ocelot.inference.runtimes import build

    gated: list = []
    real_load, real_fidelity = build._load, build.gate_fidelity

    def load(model, entry, runtime, precision, *a):
        gated.append((runtime, precision))
        return real_load(model, entry, runtime, precision, *a)

    def fidelity(*a, **k):
        fid = real_fidelity(*a, **k)
        if gated[-1] == ("openvino", "fp32") and openvino_f1 is not None:
            fid = {**fid, "cells_f1": openvino_f1}  # misses auto's margins
        return fid

    monkeypatch.setattr(build, "_load", load)
    monkeypatch.setattr(build, "gate_fidelity", fidelity)
    progress = tmp_path / "progress.jsonl"
    threads = torch.get_num_threads()
    try:
        build.build(
            {
                "checkpoint": str(tiny_ckpt),
                "entry_dir": str(tmp_path),
                "progress": str(progress),
                "candidates": [["openvino", "fp32"], ["onnxruntime", "fp32"]],
                "mode": "auto",
                "beat_reference": False,  # gate whatever the tiny model's speeds
                "threads": 1,
            }
        )
    finally:
        torch.set_num_threads(threads)
    recs = [json.loads(line) for line in progress.read_text().splitlines()]
    results = {" ".join(r["result"]): r for r in recs if "result" in r}
    assert results["openvino fp32"]["status"] == "ok"
    ort = results["onnxruntime fp32"]
    if not tried:
        assert ort == {
            "result": ["onnxruntime", "fp32"],
            "status": "reserve",
            "reserve_for": "openvino fp32",
        }
        assert ("onnxruntime", "fp32") not in gated
        assert not [r for r in recs if r.get("start") == ["onnxruntime", "fp32"]]
    else:
        assert ort["status"] == "ok" and ort["ms_per_cell_tile"] > 0, ort
        assert [r for r in recs if r.get("timed") == ["onnxruntime", "fp32"]]
        assert gated.count(("onnxruntime", "fp32")) == 2  # timed, then gated


def test_a_precision_asked_for_runs_its_best_path_within_the_gate(tiny_ckpt, monkeypatch, caplog):
    """``--precision int8`` alone (runtime auto): when no int8 path keeps auto's margins, the
    fastest int8 path that keeps the fidelity gate runs (it was asked for), with one warning; when
    none keeps even the gate, fp32 torch, with one warning naming int8."""
    import torch

    from wsi_ocelot.model.checkpoint import load_model

    for name in RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)
    model, info = load_model(str(tiny_ckpt), device="cpu")
    near = {
        "passes": True,
        "cells_f1": 0.993,
        "purity_delta": 0.0001,
    }  # the gate, not auto's margins
    data = {
        "reference": {"ms_per_cell_tile": 100.0},
        "paths": {
            "openvino int8": {"status": "ok", "fidelity": near, "ms_per_cell_tile": 20.0},
            "onnxruntime int8": {"status": "ok", "fidelity": near, "ms_per_cell_tile": 40.0},
        },
    }
    calls: list = []

    def gate_results(model, info, checkpoint, paths, threads, mode="each"):
        calls.append((paths, mode))
        return types.SimpleNamespace(dir=Path("/nonexistent")), data

    def open_backend(runtime, precision, graphs, threads, int8_float=None):
        return types.SimpleNamespace(runtime=runtime, precision=precision)

    monkeypatch.setattr(select, "gate_results", gate_results)
    monkeypatch.setattr(select, "open_backend", open_backend)
    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        choice, backend = select.choose_runtime(
            model, info, str(tiny_ckpt), torch.device("cpu"), precision="int8", threads=1
        )
    assert calls == [([("openvino", "int8"), ("onnxruntime", "int8")], "auto")]
    assert (choice.runtime, choice.precision) == ("openvino", "int8") and backend is not None
    assert choice.reason.startswith("int8 asked for") and choice.fidelity == near
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no int8 path keeps auto's margins" in warnings[0]
    assert "openvino int8" in warnings[0] and "\n" not in warnings[0]

    caplog.clear()
    for rec in data["paths"].values():
        rec["fidelity"] = {**near, "passes": False, "cells_f1": 0.95}
    with caplog.at_level(logging.WARNING, logger=SELECT_LOG):
        choice, backend = select.choose_runtime(
            model, info, str(tiny_ckpt), torch.device("cpu"), precision="int8", threads=1
        )
    assert (choice.runtime, choice.precision) == ("torch", "fp32") and backend is None
    assert choice.reason == "fallback: no int8 path keeps the fidelity gate and loads"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no int8 path keeps the fidelity gate" in warnings[0]


def test_a_build_child_reports_as_it_goes_and_never_outlives_its_time(
    tmp_path, monkeypatch, caplog
):
    """The parent logs a build child's progress records while it runs (a first build takes a
    minute or more), returns its exit code and last stderr line, and kills a child past
    ``BUILD_TIMEOUT_S``."""
    progress = tmp_path / "progress.jsonl"
    script = (
        "import json, sys, time\n"
        f"p = {str(progress)!r}\n"
        "recs = [{'reference': {'ms_per_cell_tile': 514.0}},\n"
        "        {'timed': ['openvino', 'int8'], 'ms_per_cell_tile': 105.2},\n"
        "        {'result': ['openvino', 'int8'], 'status': 'ok', 'ms_per_cell_tile': 105.2,\n"
        "         'fidelity': {'cells_f1': 0.99963, 'purity_delta': 0.00022}}]\n"
        "for r in recs:\n"
        "    open(p, 'a').write(json.dumps(r) + '\\n')\n"
        "    time.sleep(0.4)\n"
        "print('noise', file=sys.stderr); print('boom: the last line', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    with caplog.at_level(logging.INFO, logger=SELECT_LOG):
        rc, tail = select._run_child([sys.executable, "-c", script], tmp_path, progress)
    assert (rc, tail) == (3, "boom: the last line")
    lines = [r.getMessage() for r in caplog.records if r.name == SELECT_LOG]
    assert lines == [
        "  fp32 torch (the reference): 514 ms per cell tile",
        "  openvino int8: 105 ms per cell tile",
        "  openvino int8 against fp32 torch: cells F1 0.99963, tumour share +0.0002",
    ]

    monkeypatch.setattr(select, "BUILD_TIMEOUT_S", 1)
    pid_file = tmp_path / "pid"
    sleeper = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    rc, tail = select._run_child([sys.executable, "-c", sleeper], tmp_path, progress)
    assert rc == -9 and "over 1 s" in tail
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_runtimes_and_precisions_are_consistent():
    assert set(spec.SUPPORTED) == set(spec.RUNTIMES) - {"auto"}
    assert all(set(p) <= set(spec.PRECISIONS) - {"auto"} for p in spec.SUPPORTED.values())


# -- 8. evaluation in a runtime ----------------------------------------------------------------------
@pytest.mark.slow  # ~25 s: the dataset, then both runs (shares the demo build)
def test_evaluate_dataset_in_onnxruntime_matches_fp32_torch(
    demo_auto, shared_cache, tmp_path, monkeypatch
):
    from wsi_ocelot.evaluation import evaluate_dataset
    from wsi_ocelot.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

    root = (
        tmp_path / "data"
    )  # at the demo weights' own geometry: the images are the checkpoint's tiles
    write_synthetic_dataset(
        root, SyntheticDatasetConfig(seed=5, train=0, val=0, test=4, slide_size_um=1000.0)
    )
    ref = evaluate_dataset(
        "demo", root, "test", device="cpu", batch_size=2, runtime="torch", precision="fp32"
    )
    ort = evaluate_dataset(
        "demo", root, "test", device="cpu", batch_size=2, runtime="onnxruntime", precision="fp32"
    )
    assert ref["num_images"] == ort["num_images"] == 4
    assert (
        ref["overall"]["mF1"] > 0.5
    )  # the demo weights on their own kind of data: a score that means something
    assert abs(ort["overall"]["mF1"] - ref["overall"]["mF1"]) <= 0.005, (
        ref["overall"],
        ort["overall"],
    )
    assert (ort["runtime"]["runtime"], ort["runtime"]["precision"]) == ("onnxruntime", "fp32")
    assert (ref["runtime"]["runtime"], ref["runtime"]["precision"]) == ("torch", "fp32")


def test_report_names_the_runtimes_the_slides_ran(tmp_path, tiny_ckpt):
    """report.html's model line says which runtime and precision the finished slides ran (#21 item 6)."""
    import html
    import re

    from wsi_ocelot.cohort.manifest import Manifest
    from wsi_ocelot.cohort.report import write_report

    out = tmp_path / "out"
    out.mkdir()
    slides = {
        "a": {
            "status": "done",
            "path": "a.svs",
            "n_cells": 1,
            "runtime": "openvino",
            "precision": "int8",
        },
        "b": {
            "status": "done",
            "path": "b.svs",
            "n_cells": 1,
            "runtime": "torch",
            "precision": "fp32",
        },
        "c": {"status": "failed", "path": "c.svs", "error": "c.svs: broken. Fix: none"},
    }
    page = write_report(
        out, Manifest(out, slides=slides, meta={"model": str(tiny_ckpt)})
    ).read_text(encoding="utf-8")
    ran = html.unescape(re.search(r'<span id="model-runtime">([^<]*)</span>', page).group(1))
    assert ran == "openvino int8, torch fp32"
