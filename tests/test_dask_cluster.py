"""A batch on a real Dask cluster: ``dask scheduler`` and ``dask worker --nworkers 2`` started as
separate processes, as a cluster is started by hand or by dask-jobqueue. Their workers run under a
nanny, in daemonic processes (which may not start tile-reading processes), unlike the
LocalCluster of ``--scheduler local``. Also: the Slurm recipe of docs/cohorts.md, as far as a machine
without Slurm can check it (the ``SLURMCluster`` built, its job script read, then run here by hand
as Slurm would run it on a compute node)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import import_extra
from helpers import popen_cli

from wsi_ocelot.cohort import Manifest
from wsi_ocelot.cohort.inputs import SlideJob
from wsi_ocelot.inference.engine import EngineConfig

SLIDE_SIZE = (768, 768)
STARTUP_S = 120  # bounded waits: the scheduler's address, then the workers registered
VENV_LINE = "source /path/to/venv/bin/activate"

#: The ``SLURMCluster`` of docs/cohorts.md ("Slurm with dask-jobqueue"), setting for setting: one
#: GPU job per worker, one slide at a time (``cores=1``: one Dask thread), eight CPU cores for tile
#: reading, the workers started non-daemonic so that they may start tile-reading processes.
SLURM_RECIPE: dict = dict(
    queue="gpu",
    account="my-lab",
    cores=1,
    processes=1,
    job_cpu=8,
    memory="48GB",
    walltime="04:00:00",
    job_extra_directives=["--gres=gpu:1"],
    job_script_prologue=[VENV_LINE, "export DASK_DISTRIBUTED__WORKER__DAEMON=False"],
)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    from wsi_ocelot.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("dask_slides")
    paths = [root / f"case_{i}.tiff" for i in range(2)]
    for i, p in enumerate(paths):
        write_synthetic_slide(p, mpp=0.25, size=SLIDE_SIZE, seed=400 + i)
    return paths


def _clean_env() -> dict[str, str]:
    """This environment without Dask settings: the cluster starts with Dask's defaults
    (daemonic workers, OMP_NUM_THREADS=1 in each worker process), as a new user's would."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate each process group (the nanny's worker processes with it), then kill what is left."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever of the group is still there
        except ProcessLookupError:
            pass
        p.wait(15)


#: Evaluated on each worker by ``client.run(eval, ...)`` (a function of this test module would be
#: sent by reference, and the workers cannot import it).
IS_DAEMONIC = "__import__('multiprocessing').current_process().daemon"


def _wait_for_file(path: Path, proc: subprocess.Popen, what: str, log: Path) -> str:
    """The address in a scheduler file, once written (bounded wait)."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"{what} did not write {path.name} in time"
        try:
            return json.loads(path.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1`` on the loopback; yields the
    scheduler's address once both workers have registered."""
    from distributed import Client

    root = tmp_path_factory.mktemp("dask_cluster")
    sched_file = root / "scheduler.json"
    env = _clean_env()
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        logs.append(open(root / "scheduler.log", "wb"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--scheduler-file",
                    str(sched_file),
                    "--no-dashboard",
                ],
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        address = _wait_for_file(sched_file, procs[0], "the Dask scheduler", root / "scheduler.log")
        assert address.startswith("tcp://127.0.0.1:"), address
        logs.append(open(root / "worker.log", "wb"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(sched_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--local-directory",
                    str(root / "scratch"),
                ],
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        with Client(address, timeout="30s") as client:
            _wait_for_workers(client, 2, "the two Dask workers", root / "worker.log")
            daemonic = client.run(eval, IS_DAEMONIC)
        assert len(daemonic) == 2 and all(daemonic.values()), (
            daemonic
        )  # the path this module is about
        yield address
    finally:
        _stop(procs)
        for fh in logs:
            fh.close()


@pytest.fixture(scope="module")
def in_process(tiny_ckpt, slides, tmp_path_factory) -> Path:
    """The batch run in one process (default tile readers, one torch thread): the reference."""
    out = tmp_path_factory.mktemp("dask_reference") / "in_process"
    proc, _ = _run_cli("-q", "run", *map(str, slides), "--out", str(out), *_common_args(tiny_ckpt))
    assert proc.returncode == 0, proc.stderr
    assert {sid: r["status"] for sid, r in Manifest.load(out).slides.items()} == {
        "case_0": "done",
        "case_1": "done",
    }
    return out


# -- helpers -------------------------------------------------------------------------------
def _common_args(tiny_ckpt: Path) -> list[str]:
    """The same model, device and torch threads for every run (CPU results then bit-identical);
    no ``--workers``: the default tile readers, as a new user runs it."""
    return ["--model", str(tiny_ckpt), "--device", "cpu", "--threads", "1", "--no-report"]


def _assert_same_cells(reference: Path, out: Path, sids: list[str]) -> None:
    m_ref, m_out = Manifest.load(reference), Manifest.load(out)
    for sid in sids:
        assert m_out.slides[sid]["n_cells"] == m_ref.slides[sid]["n_cells"] > 0
        a, b = _cells(reference / sid), _cells(out / sid)
        assert a.shape == b.shape and a.shape[0] > 0
        np.testing.assert_array_equal(a, b)  # the same torch threads: bit-identical on a CPU


def _wait_for_workers(client, n: int, what: str, log: Path) -> None:
    """Wait until ``n`` workers have registered; fail with the end of their log where they do not."""
    try:
        client.wait_for_workers(n, timeout=STARTUP_S)
    except TimeoutError:
        pytest.fail(f"{what} did not register in time:\n" + log.read_text(errors="replace")[-4000:])


def _run_cli(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m wsi_ocelot ARGS`` in a fresh process; its result and its pid."""
    proc = popen_cli(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"wsi-ocelot {' '.join(args)} ran over {timeout} s:\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def _cells(folder: Path) -> np.ndarray:
    """The slide's cells (x, y, class, probability), sorted by position."""
    from wsi_ocelot.outputs import open_predictions

    with open_predictions(folder / "predictions.zarr") as store:
        c = store.cells()
    arr = np.stack([c["x"], c["y"], c["class"], c["prob"]], axis=1).astype(np.float64)
    return arr[np.lexsort((arr[:, 1], arr[:, 0]))]


def _pid(where: str) -> int:
    """The pid of a manifest record's ``worker`` (``host:pid`` or ``host:pid (dask worker i)``)."""
    m = re.match(r"^.*:(\d+)(?: \(dask worker \d+\))?$", where)
    assert m, where
    return int(m.group(1))


# -- the bug, in a daemonic process ----------------------------------------------------------
@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
def test_default_tile_readers_in_a_daemonic_process(tiny_ckpt, slides, tmp_path, monkeypatch):
    """A daemonic process (a Dask worker under a nanny) may not start tile-reading processes:
    the default ``workers=None`` means read in-process there, and the slide runs."""
    import wsi_ocelot.cohort.worker as worker

    monkeypatch.setattr(
        multiprocessing.current_process(), "daemon", True
    )  # what a nanny's worker process is
    monkeypatch.setattr(worker, "_RUNNERS", {})
    job = SlideJob(slide_id="case_0", path=str(slides[0]))
    outcome = worker.process_slide(
        job, str(tmp_path), str(tiny_ckpt), EngineConfig(device="cpu", progress=False)
    )
    assert outcome.status == "done", outcome.error
    assert outcome.record is not None and outcome.record.purity.n_cells > 0
    (runner,) = worker._RUNNERS.values()
    assert runner.config.workers == 0


@pytest.mark.parametrize("asked", [None, 0, 3])
def test_get_runner_tile_readers(tiny_ckpt, monkeypatch, caplog, asked):
    """Daemonic: always 0 readers (a warning when more were asked for). Not daemonic: as asked, None
    left for the engine to choose for the machine."""
    import wsi_ocelot.cohort.worker as worker

    made = []

    class FakeRunner:
        def __init__(self, model, config):
            made.append(config)

    monkeypatch.setattr(worker, "SlideRunner", FakeRunner)
    monkeypatch.setattr(worker, "_RUNNERS", {})
    cfg = EngineConfig(device="cpu", workers=asked)
    worker.get_runner(str(tiny_ckpt), cfg)
    assert made[-1].workers == asked
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    with caplog.at_level(logging.INFO, logger="wsi_ocelot.cohort.worker"):
        worker.get_runner(str(tiny_ckpt), cfg)
    assert made[-1].workers == 0
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warned) == bool(asked), [r.getMessage() for r in caplog.records]
    if asked:
        assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in warned[0].getMessage()
    worker.get_runner(str(tiny_ckpt), cfg)  # the same runner, not loaded again
    assert len(made) == (1 if asked == 0 else 2)  # 0 readers asked for: the same config either way


@pytest.mark.parametrize(
    "name, index",
    [
        (0, 0),
        ("1", 1),
        ("gpu-1", 1),
        ("SLURMCluster-3-0", 0),
        ("SLURMCluster-3", 3),
        ("tcp://127.0.0.1:40123", None),
        ("node7", None),
        (None, None),
    ],
)
def test_worker_index_from_the_names_dask_gives(monkeypatch, name, index):
    """LocalCluster names workers 0, 1, ...; ``dask worker --nworkers N --name gpu`` gpu-0, gpu-1, ...;
    a worker without a name is named by its address (no index: it keeps the device asked for)."""
    import distributed

    import wsi_ocelot.cohort.worker as worker

    monkeypatch.setattr(distributed, "get_worker", lambda: type("W", (), {"name": name})())
    assert worker._worker_index() == index


# -- a batch on `dask scheduler` + `dask worker` ----------------------------------------------
# about 31 s on a 2-core CPU (the reference run, a 3-process cluster, the batch): not marked slow on
# purpose, so that CI runs a batch on a real cluster (the path only LocalCluster used to cover)
@pytest.mark.slow  # SIGKILLs a process
def test_batch_on_dask_scheduler_and_nanny_workers_matches_in_process(
    dask_cluster, in_process, tiny_ckpt, slides, tmp_path
):
    """The batch of a new user: default tile readers (none given), daemonic workers. Every slide is
    done, on the cluster's workers, with the cells of an in-process run of the same slides."""
    out = tmp_path / "dask"
    proc, driver_pid = _run_cli(
        "-q",
        "run",
        *map(str, slides),
        "--out",
        str(out),
        *_common_args(tiny_ckpt),
        "--scheduler",
        dask_cluster,
    )
    assert proc.returncode == 0, proc.stderr
    m = Manifest.load(out)
    assert m.meta["scheduler"] == dask_cluster
    assert {sid: r["status"] for sid, r in m.slides.items()} == {
        "case_0": "done",
        "case_1": "done",
    }, {sid: r.get("error") for sid, r in m.slides.items()}
    assert all(r["attempts"] == 1 for r in m.slides.values())
    assert all(
        _pid(r["worker"]) != driver_pid for r in m.slides.values()
    )  # run on the cluster's workers
    assert not (out / ".wsi-ocelot-tasks").exists()
    _assert_same_cells(in_process, out, ["case_0", "case_1"])


# -- the Slurm recipe (dask-jobqueue) --------------------------------------------------------
def _slurm_cluster(tmp_path: Path):
    """docs/cohorts.md's ``SLURMCluster``, its scheduler on the loopback and its logs under ``tmp_path``."""
    sigint = signal.getsignal(signal.SIGINT)
    jq = import_extra("dask_jobqueue", "dev")
    # importing dask_jobqueue (its runner module) makes SIGINT exit the whole process; give the
    # test session its own handler back (a later test sends itself Ctrl-C)
    signal.signal(signal.SIGINT, sigint)
    return jq.SLURMCluster(
        **SLURM_RECIPE,
        log_directory=str(tmp_path / "dask-logs"),
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    )


@pytest.mark.slow  # a Dask cluster
def test_slurm_recipe_job_script(tmp_path):
    """The recipe's job script asks Slurm for one GPU, 8 cores and the memory, and starts one
    single-threaded worker under a nanny, non-daemonic, in the venv (no Slurm needed to build it)."""
    cluster = _slurm_cluster(tmp_path)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    finally:
        cluster.close()
    lines = script.splitlines()
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    for want in (
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=45G",
        "#SBATCH -t 04:00:00",
        "#SBATCH -p gpu",
        "#SBATCH -A my-lab",
        "#SBATCH -n 1",
    ):
        assert want in directives, (want, directives)
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    assert body[:2] == [VENV_LINE, "export DASK_DISTRIBUTED__WORKER__DAEMON=False"], (
        body
    )  # before the worker starts
    (command,) = [ln for ln in body if "distributed.cli.dask_worker" in ln]
    args = command.split()
    assert args[args.index("--nthreads") + 1] == "1"  # one slide at a time per GPU
    assert "--nworkers" not in args and "--nprocs" not in args  # processes=1: one worker per job
    assert "--nanny" in args and "--memory-limit" in args
    assert cluster.scheduler_address in args


@pytest.mark.slow  # 25-35 s on a 2-core CPU (the reference run, the worker's start, the batch)
def test_slurm_recipe_worker_runs_a_batch(in_process, tiny_ckpt, slides, tmp_path):
    """The recipe's job script, run here as Slurm would run it on a node (bash; the ``#SBATCH``
    lines are comments): its worker is non-daemonic, reads tiles in processes of its own (the
    default readers) and runs the batch given ``--scheduler <cluster.scheduler_address>``."""
    from distributed import Client

    cluster = _slurm_cluster(tmp_path)
    job = None
    try:
        script = cluster.job_script()
        assert VENV_LINE in script
        path = tmp_path / "job.sh"
        path.write_text(script.replace(VENV_LINE, "true  # this test runs in the venv already"))
        log = tmp_path / "job.log"
        with open(log, "wb") as fh:
            job = subprocess.Popen(
                ["bash", str(path)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd=tmp_path,
                start_new_session=True,
            )
        with Client(cluster, timeout="30s") as client:
            _wait_for_workers(client, 1, "the job script's worker", log)
            assert list(client.run(eval, IS_DAEMONIC).values()) == [False]
        out = tmp_path / "slurm"
        proc, _ = _run_cli(
            "-q",
            "run",
            str(slides[0]),
            "--out",
            str(out),
            *_common_args(tiny_ckpt),
            "--scheduler",
            cluster.scheduler_address,
        )
        assert proc.returncode == 0, proc.stderr + log.read_text(errors="replace")[-4000:]
        rec = Manifest.load(out).slides["case_0"]
        assert rec["status"] == "done" and rec["attempts"] == 1, rec
        _assert_same_cells(in_process, out, ["case_0"])
    finally:
        if job is not None:
            _stop([job])
        cluster.close()
