"""The slide engine: one slide in, a complete result folder out (docs/architecture.md).

A :class:`SlideRunner` loads the model once (its runtime and predictor) and runs slides with it:
for each it opens the slide, hands it to a :class:`~wsi_ocelot.inference.slide_run.SlideRun`
(the plan, the passes and the finish) and owns the result folder's lifecycle: everything is
written into a hidden folder that is renamed to ``<out>/<slide-id>`` at the end, removed on any
error, and a full disk becomes one :class:`~wsi_ocelot.errors.DiskFullError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_ocelot.atomic import partial_folder, publish_folder, write_json
from wsi_ocelot.errors import DiskFullError, WsiOcelotError, disk_full_reason
from wsi_ocelot.inference.predictor import Predictor
from wsi_ocelot.inference.run_setup import EngineConfig, LoadedModel
from wsi_ocelot.inference.runtimes.select import choose_runtime
from wsi_ocelot.inference.runtimes.select import describe as describe_runtime
from wsi_ocelot.inference.slide_run import SlideRun
from wsi_ocelot.model import load_model
from wsi_ocelot.model.device import resolve_device
from wsi_ocelot.naming import slide_id_for
from wsi_ocelot.purity import SlideRecord
from wsi_ocelot.slide import open_slide
from wsi_ocelot.weights import resolve_model, weights_note

log = logging.getLogger(__name__)

_DEFAULT_CONFIG = EngineConfig()  # the defaults, fitted to the machine when a runner resolves them

__all__ = ["EngineConfig", "SlideResult", "SlideRunner", "run_slide", "slide_id_for"]


@dataclass
class SlideResult:
    """What :func:`run_slide` produced for one slide: its folder, the seconds per stage and
    its record."""

    slide_id: str
    out_dir: Path
    timings: dict[str, float]
    record: SlideRecord

    @property
    def purity(self) -> dict[str, Any]:
        """The record as written to ``purity.json``."""
        return self.record.to_json()

    @property
    def n_cells(self) -> int:
        return self.record.purity.n_cells

    @property
    def mode(self) -> str:
        """``two-pass`` or ``per-tile``."""
        return self.record.mode or ""


class SlideRunner:
    """Runs slides with one loaded model (load it once, run many slides).

    Parameters
    ----------
    model_path
        A checkpoint (``.safetensors``) or ``"demo"`` (the shipped synthetic-data weights).
    config
        An :class:`EngineConfig`; the defaults fit the machine.

    Examples
    --------
    >>> runner = SlideRunner("demo", EngineConfig(device="cpu"))   # doctest: +SKIP
    >>> result = runner.run("slide.svs", "results")                # doctest: +SKIP
    >>> result.record.purity.purity                                # doctest: +SKIP
    """

    def __init__(self, model_path: str | os.PathLike[str], config: EngineConfig = _DEFAULT_CONFIG):
        model_path = resolve_model(model_path)  # "demo" → the shipped weights
        self.device = resolve_device(config.device)
        self.config = config.resolved(self.device)
        self.model_path = str(model_path)
        self.model_note = weights_note(model_path)  # the demo weights: synthetic-only
        self._warned_demo = (
            False  # the demo-weights warning: once per runner (a batch), not per slide
        )
        model, info = load_model(model_path, device="cpu")
        if getattr(model, "needs_tissue_label", False):
            raise WsiOcelotError(
                model_path,
                "this is a tissue-label-leaking model, which needs tissue labels as input",
                "use it for analysis with `wsi-ocelot evaluate --data`; run slides with an injection model",
            )
        self.info = info
        self.geometry = info.geometry
        if config.cell_margin is not None:
            self.geometry = dataclasses.replace(info.geometry, cell_margin=config.cell_margin)
        self.peaks = info.peaks
        self.has_tissue = bool(getattr(model, "has_tissue_branch", False))
        self.two_pass = bool(getattr(model, "supports_two_pass", True)) and not config.per_tile
        self.runtime, backend = choose_runtime(
            model,
            info,
            self.model_path,
            self.device,
            config.runtime,
            config.precision,
            two_pass=self.two_pass,
            amp=config.amp,
            threads=config.threads,
        )
        log.info("the forward pass runs in %s", describe_runtime(self.runtime))
        self.predictor = Predictor(
            model,
            self.device,
            amp=config.amp and self.runtime.precision == "bf16",
            channels_last=config.channels_last,
            backend=backend,
            cpu_bf16=self.runtime.precision == "bf16" and self.device.type == "cpu",
        )
        log.info(
            "model %s (%s, encoder %s) on %s, %s path, batch %d, %d reader process(es), %s reader",
            Path(model_path).name,
            info.model.variant,
            info.model.encoder,
            self.device,
            "two-pass" if self.two_pass else "per-tile",
            self.config.batch_size,
            self.config.workers,
            self.config.reader,
        )
        self.model = LoadedModel(
            path=self.model_path,
            note=self.model_note,
            info=info,
            geometry=self.geometry,
            peaks=self.peaks,
            predictor=self.predictor,
            device=self.device,
            runtime=self.runtime,
            has_tissue=self.has_tissue,
            two_pass=self.two_pass,
        )

    # ------------------------------------------------------------------------------------
    def run(
        self,
        slide_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        mpp: float | None = None,
        slide_id: str | None = None,
        overwrite: bool = True,
    ) -> SlideResult:
        """Process one slide into ``out_dir/<slide-id>/`` (atomically) and return a summary."""
        t_start = time.perf_counter()
        out_root = Path(out_dir)
        sid = slide_id or slide_id_for(slide_path)
        final = out_root / sid
        if final.exists() and not overwrite:
            raise WsiOcelotError(
                final, "the output folder exists", "pass --overwrite, or choose another --out"
            )
        try:
            return self._run(slide_path, out_root, sid, mpp, t_start)
        except Exception as err:
            reason = disk_full_reason(err)
            if reason and not isinstance(err, DiskFullError):
                raise DiskFullError.under(
                    out_root,
                    f"{reason} while writing the results of {sid} (its unfinished folder was removed)",
                ) from err
            raise

    def _run(
        self,
        slide_path: str | os.PathLike[str],
        out_root: Path,
        sid: str,
        mpp: float | None,
        t_start: float,
    ) -> SlideResult:
        final = out_root / sid
        out_root.mkdir(parents=True, exist_ok=True)
        work = partial_folder(out_root, sid)
        try:
            with open_slide(slide_path, mpp=mpp, reader=self.config.reader) as slide:
                if self.model_note and not slide.is_synthetic:
                    self._warn_demo(slide.path)
                run = SlideRun(self.model, self.config, slide, work, sid)
                record = run.run()
            timings = {**run.timings, "total": time.perf_counter() - t_start}
            record = dataclasses.replace(
                record, runtime_s={k: round(v, 3) for k, v in timings.items()}
            )
            write_json(work / "purity.json", record.to_json())
            publish_folder(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        p = record.purity
        log.info(
            "%s: %d cells, purity %s, %.1f s -> %s",
            sid,
            p.n_cells,
            "n/a" if p.purity is None else f"{p.purity:.3f}",
            timings["total"],
            final,
        )
        return SlideResult(sid, final, timings, record)

    def _warn_demo(self, path: Path) -> None:
        """The demo weights on a real slide: a warning once (the note is in every output anyway)."""
        if self._warned_demo:
            log.debug("%s: demo weights on a slide that is not synthetic (warned once)", path)
            return
        self._warned_demo = True
        log.warning(
            "the demo weights were trained on synthetic slides only; %s is not synthetic, so its cells and purity mean "
            "nothing (every output says so). Train on your data (training/README.md) and pass --model PATH",
            path,
        )


def run_slide(
    slide_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    config: EngineConfig = _DEFAULT_CONFIG,
    *,
    mpp: float | None = None,
) -> SlideResult:
    """Load ``model_path`` and run one slide into ``out_dir/<slide-id>/``.

    Parameters
    ----------
    slide_path
        The slide file.
    out_dir
        The output folder; the slide's folder appears in it when complete.
    model_path
        A checkpoint or ``"demo"``.
    config
        An :class:`EngineConfig`.
    mpp
        µm per level-0 pixel, overriding the slide's metadata.

    Returns
    -------
    SlideResult
        The folder, the cell count, timings and the slide's record (``purity.json``).

    Examples
    --------
    >>> res = run_slide("slide.svs", "results", "demo", EngineConfig(device="cpu"))  # doctest: +SKIP
    """
    return SlideRunner(model_path, config).run(slide_path, out_dir, mpp=mpp)
