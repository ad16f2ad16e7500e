"""What a new user hit (issue 19): results never replaced silently, resume from anywhere, a batch
that does not depend on its stdout, options and inputs checked before any slide, signals that end
a batch like Ctrl-C should. Each test names the bug; each failed on main 5c33eab."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from helpers import cpu_run_options, popen_cli, run_cli

from wsi_ocelot.cli import main
from wsi_ocelot.cohort import Manifest

SIZE = (768, 768)
FAST = ["--device", "cpu", "--workers", "0", "--threads", "1", "--no-report"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """Three slides in cohort/, and other/s1.tiff: another slide with the same stem as cohort/s1.tiff."""
    from wsi_ocelot.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("safety")
    (root / "cohort").mkdir()
    (root / "other").mkdir()
    for i in range(3):
        write_synthetic_slide(root / "cohort" / f"s{i}.tiff", mpp=0.25, size=SIZE, seed=500 + i)
    write_synthetic_slide(root / "other" / "s1.tiff", mpp=0.25, size=SIZE, seed=599)
    return {"root": root, "cohort": root / "cohort", "other": root / "other"}


def _run(*args: str, cwd: Path | None = None) -> int:
    """``wsi-ocelot`` in this process (torch stays imported: much faster than a subprocess)."""
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return main(list(args))
    finally:
        os.chdir(old)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# -- bug 1: an --out that cannot be written ------------------------------------------------
def test_unwritable_out_is_one_line_before_the_model_loads(slides, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "existing_file.txt"
    a_file.write_text("not a folder")
    missing_model = str(tmp_path / "never-read.safetensors")  # the --out error comes first
    for out, needle in [
        (a_file, "is a file, not a folder"),
        (a_file / "sub", "cannot write the results there"),
    ]:
        assert _run("run", str(slides["cohort"]), "--out", str(out), "--model", missing_model) == 2
        err = capsys.readouterr().err
        assert (
            "Traceback" not in err
            and len(_error_lines(err)) == 1
            and str(out) in err
            and needle in err
            and "Fix:" in err
        )
    # a read-only mount (EROFS), as the file system reports it
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert (
        _run(
            "run",
            str(slides["cohort"]),
            "--out",
            str(tmp_path / "ro" / "res"),
            "--model",
            missing_model,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "Read-only file system" in err and "--out" in err


# -- bug 2: another slide with the same stem -----------------------------------------------
@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_a_different_slide_with_the_same_stem_never_replaces_a_result(
    slides, tiny_ckpt, tmp_path, capsys
):
    out = tmp_path / "res"
    assert (
        _run("run", str(slides["cohort"]), "--out", str(out), "--model", str(tiny_ckpt), *FAST) == 0
    )
    before = _digest(out / "s1")
    capsys.readouterr()
    other = slides["other"] / "s1.tiff"
    assert _run("run", str(other), "--out", str(out), "--model", str(tiny_ckpt), *FAST) == 2
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "already holds the finished result" in ln)
    assert (
        str(other) in line
        and str(slides["cohort"] / "s1.tiff") in line
        and "'id' column" in line
        and "--overwrite" in line
    )
    assert _digest(out / "s1") == before
    rec = Manifest.load(out).slides["s1"]
    assert rec["status"] == "done" and rec["path"] == str(slides["cohort"] / "s1.tiff")
    # the way out: a manifest id
    csv = tmp_path / "other.csv"
    csv.write_text(f"slide,id\n{other},s1_other\n", encoding="utf-8")
    assert _run("run", str(csv), "--out", str(out), "--model", str(tiny_ckpt), *FAST) == 0
    assert _digest(out / "s1") == before and (out / "s1_other" / "purity.json").is_file()
    # --overwrite replaces it, on purpose
    assert (
        _run("run", str(other), "--out", str(out), "--model", str(tiny_ckpt), "--overwrite", *FAST)
        == 0
    )
    assert Manifest.load(out).slides["s1"]["path"] == str(other) and _digest(out / "s1") != before


# -- bug 3: resume from another working directory; a moved cohort ---------------------------
@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_resume_works_from_any_folder_and_recognises_a_moved_cohort(
    slides, tiny_ckpt, tmp_path, capsys
):
    root, out = slides["root"], tmp_path / "res"
    assert (
        _run(
            "run",
            "cohort/s0.tiff",
            "cohort/s2.tiff",
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            *FAST,
            cwd=root,
        )
        == 0
    )
    rec = Manifest.load(out).slides["s0"]
    assert rec["path"] == str(root / "cohort" / "s0.tiff")  # stored absolute
    assert rec["identity"]["size"] == (root / "cohort" / "s0.tiff").stat().st_size
    done = {sid: _digest(out / sid) for sid in ("s0", "s2")}
    capsys.readouterr()
    assert (
        _run(
            "run",
            "s0.tiff",
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            *FAST,
            cwd=root / "cohort",
        )
        == 0
    )
    assert "1 slide(s) already done, skipped" in capsys.readouterr().out
    # the same files under a new mount point: recognised by size and the hash of both ends
    moved = tmp_path / "new_mount" / "cohort"
    shutil.copytree(root / "cohort", moved)  # copytree keeps mtimes; content decides anyway
    os.utime(moved / "s0.tiff", ns=(1, 1))
    assert (
        _run(
            "run",
            str(moved / "s0.tiff"),
            str(moved / "s2.tiff"),
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            *FAST,
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "2 slide(s) already done, skipped" in cap.out
    assert "moved (same size and the same hash" in cap.err
    assert {sid: _digest(out / sid) for sid in ("s0", "s2")} == done
    assert Manifest.load(out).slides["s0"]["path"] == str(moved / "s0.tiff")
    # a file changed at the same path is run again
    shutil.copy(slides["other"] / "s1.tiff", moved / "s2.tiff")
    assert (
        _run("run", str(moved / "s2.tiff"), "--out", str(out), "--model", str(tiny_ckpt), *FAST)
        == 0
    )
    assert (
        "changed since it was done" in capsys.readouterr().err and _digest(out / "s2") != done["s2"]
    )


# -- rough edge: a changed --mpp or model invalidates "done" ------------------------------
@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_a_changed_mpp_override_or_model_runs_a_done_slide_again(
    slides, tiny_ckpt, tmp_path, capsys
):
    out, s0 = tmp_path / "res", str(slides["cohort"] / "s0.tiff")
    assert _run("run", s0, "--out", str(out), "--model", str(tiny_ckpt), *FAST) == 0
    assert _run("run", s0, "--out", str(out), "--model", str(tiny_ckpt), "--mpp", "0.3", *FAST) == 0
    assert "the MPP override changed (none -> 0.3)" in capsys.readouterr().err
    assert json.loads((out / "s0" / "purity.json").read_text())["mpp"] == pytest.approx(0.3)
    capsys.readouterr()
    assert _run("run", s0, "--out", str(out), "--model", str(tiny_ckpt), "--mpp", "0.3", *FAST) == 0
    assert "1 slide(s) already done" in capsys.readouterr().out
    other = write_tiny_checkpoint(tmp_path / "other.safetensors", tilt=False)
    assert _run("run", s0, "--out", str(out), "--model", str(other), "--mpp", "0.3", *FAST) == 0
    assert "done with another model" in capsys.readouterr().err
    assert Manifest.load(out).slides["s0"]["model"] == str(other)


# -- bug 4: a closed stdout ---------------------------------------------------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_a_closed_stdout_does_not_stop_the_batch(slides, tiny_ckpt, tmp_path):
    out = tmp_path / "res"
    proc = popen_cli(
        "run", str(slides["cohort"]), *cpu_run_options(out, tiny_ckpt), "--threads", "1"
    )
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(600) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err
    assert Manifest.load(out).counts() == {"done": 3, "failed": 0, "running": 0}
    assert (out / "report.html").is_file() and "batch finished" in (out / "run.log").read_text()


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_into_a_closed_pipe_exits_quietly(pattern_slide):
    proc = subprocess.run(
        f"{sys.executable} -m wsi_ocelot info --json {pattern_slide} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.strip() == "{" and proc.stderr == "", proc.stderr


# -- bug 5: bad options fail the command, not every slide ---------------------------------
@pytest.mark.parametrize(
    "option, needle",
    [
        (["--device", "foo"], "unknown device 'foo'"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--cell-margin", "600"], "--cell-margin 600"),
        (["--mpp", "-1"], "--mpp -1"),
        (["--mpp", "60"], "between 0.02 and 50"),
    ],
)
def test_bad_options_fail_the_command_before_any_slide(
    slides, tiny_ckpt, tmp_path_factory, capsys, option, needle
):
    out = tmp_path_factory.getbasetemp() / "bad_options_res"
    if not (out / "manifest.json").exists():  # every slide done, once for all the cases
        assert (
            _run("run", str(slides["cohort"]), "--out", str(out), "--model", str(tiny_ckpt), *FAST)
            == 0
        )
    before = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert (
            _run(
                "run",
                str(slides["cohort"]),
                "--out",
                str(out),
                "--model",
                str(tiny_ckpt),
                *FAST,
                *option,
                *extra,
            )
            == 2
        )
        err = capsys.readouterr().err
        lines = _error_lines(err)
        assert len(lines) == 1 and needle in lines[0] and "Fix:" in lines[0], err
    assert (out / "manifest.json").read_bytes() == before  # no slide touched, no record rewritten


def test_the_mpp_range_is_one_for_the_flag_and_the_manifest(tmp_path):
    from wsi_ocelot.cohort import read_manifest_csv
    from wsi_ocelot.errors import MppError, WsiOcelotError
    from wsi_ocelot.slide import check_mpp

    for value in ("0.01", "51", "-1", "nan"):
        p = tmp_path / "m.csv"
        p.write_text(f"slide,mpp\na.svs,{value}\n", encoding="utf-8")
        with pytest.raises(WsiOcelotError, match="between 0.02 and 50"):
            read_manifest_csv(p)
        with pytest.raises(MppError, match="between 0.02 and 50"):
            check_mpp(value, None, "--mpp")
    assert check_mpp("0.02", None) == 0.02 and check_mpp(50, None) == 50.0


# -- rough edge: input errors are reported before the model loads, not recorded -------------
@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_input_errors_are_reported_up_front_and_not_recorded(slides, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "res"
    typo = tmp_path / "s9.tiff"
    notes = tmp_path / "notes.svs"
    notes.write_text("not a slide")
    code = _run(
        "run",
        str(slides["cohort"] / "s0.tiff"),
        str(typo),
        str(notes),
        "--out",
        str(out),
        "--model",
        str(tiny_ckpt),
        *FAST,
    )
    cap = capsys.readouterr()
    assert code == 2  # the slides that exist ran; the inputs that did not are the user's to fix
    first_error = cap.err.index("error:")
    assert first_error < cap.err.index(
        "batch of 1 slide(s)"
    )  # before the batch (and its model) started
    assert f"{typo}: no such file" in cap.err and f"{notes}: not a slide format" in cap.err
    assert "2 input(s) not run" in cap.err
    m = Manifest.load(out)
    assert set(m.slides) == {"s0"} and m.slides["s0"]["status"] == "done"
    assert (
        len(m.meta["last_run"]["not_run"]) == 2
    )  # and the report lists them apart from the slides
    from wsi_ocelot.cohort import write_report

    page = write_report(out, m).read_text(encoding="utf-8")
    assert 'id="not-run"' in page and "notes.svs: not a slide format" in page


# -- bug 9: the cell margin described as it is ----------------------------------------------
def test_the_demo_margin_is_described_as_it_is():
    from wsi_ocelot.cli import build_parser
    from wsi_ocelot.model import read_checkpoint_info
    from wsi_ocelot.weights import demo_path

    info = read_checkpoint_info(demo_path())
    margin = info.geometry.cell_margin
    note = info.extra["training"]["inference_note"] if hasattr(info, "extra") else None
    if note is None:
        from safetensors import safe_open

        with safe_open(str(demo_path()), "pt") as f:
            note = json.loads(f.metadata()["wsi_ocelot"])["training"]["inference_note"]
    assert f"{margin} px" in note and "160" not in note
    run = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
        if "--cell-margin" in a.option_strings
    )
    assert f"{margin} for the demo" in run.help and "160" not in run.help


# -- rough edges: --help ------------------------------------------------------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_help_says_each_default_once_and_keeps_words_whole():
    for verb in (
        "run",
        "demo",
        "evaluate",
        "tiles",
        "info",
        "synth-slide",
        "synth-dataset",
        "export-spatialdata",
        "report",
    ):
        text = run_cli(verb, "--help").stdout
        assert "(default: None)" not in text, verb
        for block in text.split("\n  -")[1:]:
            assert block.lower().count("default") <= 1, (verb, block)
    top = run_cli("--help").stdout
    assert (
        "wsi-ocelot[spatialdata]" in top.replace("\n", " ")
        or "wsi-ocelot[spatialdata]" in run_cli("export-spatialdata", "--help").stdout
    )
    run = run_cli("run", "--help").stdout
    required = run[run.index("\nrequired:") :]
    assert "--out DIR" in required and "--model CKPT" in required
    assert "(default: auto)" in run_cli("evaluate", "--help").stdout


def test_verbosity_levels(synth_05, capsys):
    import logging

    assert main(["info", str(synth_05)]) == 0
    assert logging.getLogger("wsi_ocelot").level == logging.INFO
    assert main(["-v", "info", str(synth_05)]) == 0
    assert (
        logging.getLogger("wsi_ocelot").level == logging.DEBUG
        and logging.getLogger().level == logging.WARNING
    )
    assert main(["-vv", "info", str(synth_05)]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert main(["-q", "info", str(synth_05)]) == 0
    assert logging.getLogger("wsi_ocelot").level == logging.WARNING
    capsys.readouterr()


# -- rough edges: the demo warning, no bars or hidden folders in logs ----------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_demo_warning_once_per_run_and_logs_name_only_final_folders(tmp_path):
    """Two slides that are not synthetic (plain TIFFs): one warning with the ``warning:`` prefix; no
    progress bar and no hidden ``.partial-`` folder in what a non-terminal stderr receives."""
    from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    for i in range(2):
        img = (200 + rng.integers(-40, 40, (512, 512, 3))).clip(0, 255).astype(np.uint8)
        write_pyramidal_tiff(tmp_path / f"plain_{i}.tiff", img, 0.25)
    out = tmp_path / "res"
    proc = run_cli(
        "run",
        str(tmp_path / "plain_0.tiff"),
        str(tmp_path / "plain_1.tiff"),
        *cpu_run_options(out, "demo"),
        "--threads",
        "1",
        "--no-report",
    )
    assert proc.returncode == 0, proc.stderr
    warns = [ln for ln in proc.stderr.splitlines() if "demo weights" in ln]
    assert len(warns) == 1 and warns[0].startswith("warning: ") and "plain_0.tiff" in warns[0], (
        proc.stderr
    )
    assert "synthetic: synthetic" not in warns[0]  # no stutter
    assert ".partial-" not in proc.stderr and "\r" not in proc.stderr and "pass:" not in proc.stderr
    assert ".partial-" not in (out / "run.log").read_text()


# -- rough edge: SIGTERM and Ctrl-C end a batch as they should ----------------------------
@pytest.mark.slow  # runs the CLI or Python in a subprocess
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_marks_the_slide_pending_and_writes_the_reports(
    slides, tiny_ckpt, tmp_path, sig, code
):
    out = tmp_path / "res"
    inputs = [str(slides["cohort"] / f"s{i}.tiff") for i in range(3)] + [
        str(slides["other"] / "s1.tiff")
    ]
    csv = tmp_path / "four.csv"
    csv.write_text(
        "slide,id\n" + "".join(f"{p},slide_{i}\n" for i, p in enumerate(inputs)), encoding="utf-8"
    )
    proc = popen_cli(
        "run",
        str(csv),
        *cpu_run_options(out, tiny_ckpt, workers=1),
        "--threads",
        "1",
        # Ctrl-C as a terminal sends it, also where this test runs in the background (a shell
        # starts background jobs with SIGINT ignored, and a child inherits that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while True:  # wait until a slide is done and a later one is running (~2 s each, the last
        # of the four included: asking for exactly one done slide missed it on a loaded machine)
        assert time.time() < deadline and proc.poll() is None, "the batch never ran its 2nd slide"
        states = [r["status"] for r in Manifest.load(out).slides.values()]  # snapshot + journal
        if "done" in states and "running" in states:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err
    m = Manifest.load(out)
    statuses = {k: v["status"] for k, v in m.slides.items()}
    assert "running" not in statuses.values() and "pending" in statuses.values(), statuses
    assert all("interrupted" in m.slides[k]["error"] for k, s in statuses.items() if s == "pending")
    assert m.meta["last_run"]["interrupted"] == ("SIGTERM" if sig == signal.SIGTERM else "SIGINT")
    assert (out / "report.html").is_file() and (out / "summary.csv").is_file()
    assert not (out / ".wsi-ocelot.lock").exists()
    assert not [p for p in out.iterdir() if ".partial-" in p.name], err
    # the same command again goes on where it stopped
    proc = run_cli("run", str(csv), "--out", str(out), "--model", str(tiny_ckpt), *FAST)
    assert proc.returncode == 0, proc.stderr
    assert Manifest.load(out).counts() == {"done": 4, "failed": 0, "running": 0}


def test_no_progress_bars_off_a_terminal():
    """The engine's bars show on a terminal only, also for library users (run_slide, SlideRunner)
    whose config keeps the default progress=True: under pytest stderr is a pipe."""
    from wsi_ocelot.inference.slide_run import _progress

    assert not sys.stderr.isatty()
    assert _progress(3, "cell pass", True).disable and _progress(3, "cell pass", False).disable


def test_an_unexpected_error_leaves_its_traceback_in_a_slide_log(
    slides, tiny_ckpt, tmp_path, monkeypatch, capsys
):
    """#22 item 4: the whole traceback of a slide's unexpected error (a bug) goes to
    <out>/logs/<slide-id>.log, which the manifest and the one-line error point to."""
    import wsi_ocelot.cohort.worker as worker

    class Broken:
        def run(self, *a, **k):
            raise RuntimeError("boom in the engine")

    monkeypatch.setattr(worker, "get_runner", lambda model, config: Broken())
    out = tmp_path / "res"
    assert (
        _run(
            "run",
            str(slides["cohort"] / "s0.tiff"),
            "--out",
            str(out),
            "--model",
            str(tiny_ckpt),
            *FAST,
        )
        == 1
    )
    rec = Manifest.load(out).slides["s0"]
    assert (
        rec["status"] == "failed" and rec["log"] == "logs/s0.log" and "logs/s0.log" in rec["error"]
    )
    text = (out / rec["log"]).read_text()
    assert (
        "Traceback" in text
        and "RuntimeError: boom in the engine" in text
        and str(slides["cohort"] / "s0.tiff") in text
    )
    assert (
        "Traceback" not in capsys.readouterr().err.split("1 slide(s) failed")[-1]
    )  # the closing table stays one line each


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_status_while_a_batch_runs_and_after(slides, tiny_ckpt, tmp_path):
    """`wsi-ocelot status OUT` (#22 item 2's reader): counts, this run's progress, throughput and ETA
    while it runs; the last run and every failed slide after it."""
    from wsi_ocelot.cohort.status import batch_status, format_status

    out = tmp_path / "res"
    nompp = tmp_path / "nompp.tiff"
    from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

    write_pyramidal_tiff(
        nompp, np.full((256, 256, 3), 200, np.uint8), None
    )  # fails when it runs: no MPP
    inputs = [str(slides["cohort"] / f"s{i}.tiff") for i in range(3)] + [str(nompp)]
    proc = popen_cli("run", *inputs, "--out", str(out), "--model", str(tiny_ckpt), *FAST)
    seen = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            st = batch_status(out)
        except Exception:  # noqa: BLE001 - no manifest yet
            time.sleep(0.05)
            continue
        if st.running and st.run_finished and st.run_finished < (st.run_total or 0):
            seen = st
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err  # nompp failed
    assert seen is not None, "never saw the batch running with a slide finished"
    assert seen.run_total == 4 and seen.eta_s is not None and seen.slides_per_hour > 0
    assert "a batch is running" in format_status(seen) and "ETA" in format_status(seen)
    after = batch_status(out)
    assert not after.running and after.counts["done"] == 3 and after.counts["failed"] == 1
    text = format_status(after)
    assert (
        "no batch running" in text
        and "last run: 3 done, 1 failed" in text
        and "nompp:" in text
        and "--mpp" in text
    )
    proc = run_cli("status", str(out), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["counts"]["failed"] == 1
    assert run_cli("status", str(tmp_path)).returncode == 2
