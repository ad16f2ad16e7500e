"""The ``wsi-ocelot`` command line: thin verbs over the library.

Each verb parses its flags, builds a config and makes one library call. Heavy imports
(torch, openslide) happen inside the verbs so ``--help`` is instant. Errors meant for
the user print one line (file, problem, fix) and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_ocelot import __version__
from wsi_ocelot.constants import (
    CELL_TABLE_FORMATS,
    DEFAULT_MAX_UNREADABLE,
    NGFF_VERSIONS,
    PRECISIONS,
    READERS,
    RUNTIMES,
)
from wsi_ocelot.errors import WsiOcelotError

if TYPE_CHECKING:  # the CLI imports its commands' modules lazily, when they run
    from wsi_ocelot.config import GeometryConfig

log = logging.getLogger("wsi_ocelot")

EXIT_USER_ERROR = 2


class _ConsoleFormatter(logging.Formatter):
    """Console lines: the message alone, ``warning:`` / ``error:`` before those levels (as the
    CLI's own error line); with ``-v`` the logger's name too."""

    def __init__(self, names: bool):
        super().__init__("%(name)s: %(message)s" if names else "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Console logging: INFO of wsi-ocelot by default; ``-q`` warnings and errors only; ``-v``
    wsi-ocelot's debug lines; ``-vv`` also the libraries' (Dask, PyTorch, ...) info and debug."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter(names=verbose >= 1))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("wsi_ocelot").setLevel(level)
    logging.getLogger("training").setLevel(level)


def _geometry(args: argparse.Namespace) -> GeometryConfig:
    from wsi_ocelot.config import load_geometry

    return load_geometry(getattr(args, "geometry", None), getattr(args, "tile_size", None))


# -- stdout and signals ---------------------------------------------------------------------
EXIT_SIGPIPE = 128 + 13  # the shell's status of a command whose reader went away (`| head`)


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone: nothing else is written or flushed into
    the closed pipe (not even at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _say(line: str) -> None:
    """A result line on stdout. A closed stdout (`| head -0`) is not the batch's business: the
    results are on disk, the log in run.log; the line is dropped."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _on_sigterm(signum: int, frame: object) -> None:
    from wsi_ocelot.errors import Interrupted

    raise Interrupted("SIGTERM")


# -- verbs ---------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.slide.mask import tissue_mask_from_image
    from wsi_ocelot.slide.stain_check import classify_stain

    # require_mpp=False: a slide without MPP still shows everything else, and says what is missing
    with open_slide(args.slide, mpp=args.mpp, require_mpp=False) as slide:
        thumb, thumb_ds = slide.thumbnail()
        mask = tissue_mask_from_image(thumb, thumb_ds)
        stain = classify_stain(thumb, mask.mask)
        mi = slide.mpp_info
        info: dict[str, Any] = {
            "path": str(slide.path),
            "format": slide.vendor,
            "dimensions": list(slide.dimensions),
            "mpp": None if mi.missing else {"x": mi.x, "y": mi.y, "source": mi.source},
            "levels": [
                {
                    "level": i,
                    "dimensions": list(d),
                    "downsample": round(ds, 4),
                    "mpp": None if mi.missing else round(slide.mpp * ds, 4),
                }
                for i, (d, ds) in enumerate(
                    zip(slide.level_dimensions, slide.level_downsamples, strict=True)
                )
            ],
            "objective_power": slide.properties.get("openslide.objective-power"),
            "qupath_bounds": list(slide.bounds),
            "tissue_fraction": round(mask.fraction, 4),
            "stain": {**stain.to_json(), "description": stain.description},
            "size_mm": None
            if mi.missing
            else [
                round(slide.dimensions[0] * mi.x / 1000, 3),
                round(slide.dimensions[1] * mi.y / 1000, 3),
            ],
        }
        if mi.missing:
            info["mpp_missing"] = mi.problem
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    size_mm = f" ({info['size_mm'][0]} x {info['size_mm'][1]} mm)" if info["size_mm"] else ""
    print(f"{info['path']}")
    print(f"  format           {info['format']}")
    print(f"  dimensions       {info['dimensions'][0]} x {info['dimensions'][1]} px{size_mm}")
    if info["mpp"] is None:
        print(
            f"  MPP              missing: {info['mpp_missing']}. Fix: pass --mpp X (µm per level-0 pixel, e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    else:
        print(
            f"  MPP              {info['mpp']['x']:.4f} x {info['mpp']['y']:.4f} µm/px (from {info['mpp']['source']})"
        )
    if info["objective_power"]:
        print(f"  objective power  {info['objective_power']}x")
    print(f"  tissue fraction  {info['tissue_fraction']:.1%}")
    print(f"  stain            {stain.description}")
    if not stain.is_brightfield:
        print(
            "                   `run` fails this slide: the model reads brightfield H&E only (--allow-non-brightfield runs it anyway)"
        )
    print("  levels")
    for lv in info["levels"]:
        lv_mpp = "" if lv["mpp"] is None else f"  ({lv['mpp']:.3f} µm/px)"
        print(
            f"    {lv['level']}: {lv['dimensions'][0]} x {lv['dimensions'][1]}  downsample {lv['downsample']:g}{lv_mpp}"
        )
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    import dataclasses

    from wsi_ocelot.errors import ConfigError
    from wsi_ocelot.slide import open_slide
    from wsi_ocelot.tiling.export import export_pairs, write_metadata

    if args.like and args.geometry:
        raise ConfigError(
            None,
            "--like and --geometry both set the geometry",
            "pass one: --like CKPT (a model to fine-tune) or --geometry YAML",
        )
    if (
        args.like
    ):  # the geometry the model was trained at, so the dataset fits it; --tile-size still applies
        from wsi_ocelot.model import read_checkpoint_info
        from wsi_ocelot.weights import resolve_model

        geo = read_checkpoint_info(resolve_model(args.like)).geometry
        if args.tile_size:
            r = args.tile_size / geo.tile_size
            geo = dataclasses.replace(
                geo,
                tile_size=args.tile_size,
                cell_margin=round(geo.cell_margin * r),
                tissue_margin=round(geo.tissue_margin * r),
            )
    else:
        geo = _geometry(args)
    annotated_only = [
        flag
        for flag, value in (
            ("--class-map", args.class_map),
            ("--val-slides", args.val_slides),
            ("--test-slides", args.test_slides),
            ("--split-by-region", args.split_by_region),
            ("--append", args.append),
            ("--no-qupath-crop", args.no_qupath_crop),
        )
        if value
    ]
    if not args.annotations:
        if annotated_only:
            raise ConfigError(
                None,
                f"{', '.join(annotated_only)} only apply with --annotations",
                "pass --annotations PATH (QuPath GeoJSON), or drop them",
            )
        pairs: dict = {}
        for path_ in args.slides:
            with open_slide(path_, mpp=args.mpp) as slide:
                got = export_pairs(
                    slide,
                    args.out,
                    geo,
                    limit=args.limit,
                    offsets=args.offsets,
                    seed=args.seed,
                    split=args.split,
                    start_id=len(pairs) + 1,
                )
                if not got:
                    print(f"{path_}: no tissue found, 0 pairs written")
                pairs.update(got)
        source = (
            {"source_slide": str(args.slides[0])}
            if len(args.slides) == 1
            else {"source_slides": [str(x) for x in args.slides]}
        )
        path = write_metadata(args.out, pairs, geo, **source)
        if pairs:
            print(
                f"wrote {len(pairs)} cell/tissue pairs to {Path(args.out) / 'images'}; metadata in {path}"
            )
        else:
            print(f"0 pairs written; metadata in {path}")
        return 0

    from wsi_ocelot.datasets.qupath import ClassMap, load_class_map
    from wsi_ocelot.tiling.annotated import (
        AnnotatedTilingConfig,
        SplitRule,
        build_annotated_dataset,
    )

    if args.limit is not None:
        raise ConfigError(
            None,
            "--limit does not apply with --annotations (every annotated region is tiled)",
            "drop --limit",
        )
    cfg = AnnotatedTilingConfig(
        geometry=geo,
        class_map=load_class_map(args.class_map) if args.class_map else ClassMap(),
        split=SplitRule(
            split=args.split,
            val_slides=tuple(args.val_slides or ()),
            test_slides=tuple(args.test_slides or ()),
            val_fraction=args.val_fraction,
            by_region=args.split_by_region,
        ),
        offsets=args.offsets,
        seed=args.seed,
        min_region_fraction=args.min_region_fraction,
        qupath_crop=not args.no_qupath_crop,
        geometry_from=str(args.like) if args.like else None,
    )
    result = build_annotated_dataset(
        args.slides, args.annotations, args.out, cfg, mpp=args.mpp, append=args.append
    )
    per = ", ".join(
        f"{sp} {result.n_pairs(sp)} ({len(result.splits[sp])} slide{'s' if len(result.splits[sp]) != 1 else ''})"
        for sp in ("train", "val", "test")
        if result.splits[sp]
    )
    print(
        f"{'added' if args.append else 'wrote'} {len(result.pairs)} cell/tissue pairs with labels from {len(args.slides)} annotated "
        f"slide{'s' if len(args.slides) != 1 else ''} to {args.out}: {per}; metadata in {result.metadata}"
    )
    return 0


def cmd_synth_slide(args: argparse.Namespace) -> int:
    from wsi_ocelot.synthetic import write_synthetic_slide

    result = write_synthetic_slide(
        args.out, mpp=args.mpp, size=tuple(args.size), seed=args.seed, empty=args.empty
    )
    print(f"wrote {result.tiff_path}, {result.cells_path}, {result.tissue_path}")
    print(result.stats.format_table())
    return 0


def cmd_synth_dataset(args: argparse.Namespace) -> int:
    from wsi_ocelot.synthetic.command import synth_dataset

    print(synth_dataset(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from wsi_ocelot.cohort import CohortConfig, SlideJob, collect_jobs, run_cohort
    from wsi_ocelot.cohort.outcome import SlideOutcome
    from wsi_ocelot.inference.engine import EngineConfig
    from wsi_ocelot.slide import check_mpp

    if args.model is None:
        raise WsiOcelotError(
            None,
            "no --model given",
            "pass --model CHECKPOINT.safetensors (weights trained on your data: training/README.md), "
            "or --model demo for the synthetic-data demo weights (not for real slides)",
        )
    if args.mpp is not None:
        check_mpp(args.mpp, None, "--mpp")
    jobs = collect_jobs(args.inputs, mpp=args.mpp)
    if not jobs:
        raise WsiOcelotError(
            None,
            "no slides to run",
            "pass slide files, folders that hold slides, or a CSV manifest with a 'slide' column",
        )
    engine = EngineConfig(
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        per_tile=args.per_tile,
        geojson_gzip=args.geojson_gzip,
        qupath_crop=not args.no_qupath_crop,
        progress=not args.no_progress and args.scheduler is None,
        amp=not args.no_amp,
        cell_margin=args.cell_margin,
        reader=args.reader,
        max_unreadable=args.max_unreadable,
        ngff=args.ngff,
        cells_table=args.cells_table,
        stain_check=not args.allow_non_brightfield,
        runtime=args.runtime,
        precision=args.precision,
    )
    cfg = CohortConfig(
        model=args.model,
        engine=engine,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        dask_workers=args.dask_workers,
        retries=args.retries,
        report=not args.no_report,
        threads=args.threads,
    )

    def show(job: SlideJob, outcome: SlideOutcome) -> None:
        if outcome.record is not None:
            p = outcome.record.purity
            purity = f"n/a ({p.purity_reason})" if p.purity is None else f"{p.purity:.3f}"
            _say(
                f"{job.slide_id}: {p.n_cells} cells, purity {purity}, outputs in {Path(args.out) / job.slide_id}"
            )

    result = run_cohort(jobs, args.out, cfg, on_record=show)
    if result.skipped:
        _say(f"{len(result.skipped)} slide(s) already done, skipped (--overwrite redoes them)")
    _say(
        f"{len(result.done)} done, {len(result.failed)} failed, {len(result.skipped)} skipped"
        + (f", {len(result.pending)} pending" if result.pending else "")
        + (f", {len(result.input_errors)} input(s) not run" if result.input_errors else "")
        + f"; manifest, summary.csv and report.html in {args.out}"
    )
    if result.failed:
        print(result.failure_table(), file=sys.stderr)
    if result.input_errors:
        print(
            f"{len(result.input_errors)} input(s) not run (nothing recorded for them):",
            file=sys.stderr,
        )
        for line in result.input_errors:
            print(f"  {line}", file=sys.stderr)
    if result.stopped:
        print(result.stopped, file=sys.stderr)
    return result.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    from wsi_ocelot.cohort.status import batch_status, format_status

    st = batch_status(args.dir)
    _say(json.dumps(st.to_json(), indent=2) if args.json else format_status(st))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from wsi_ocelot.cohort import rebuild_reports

    csv_path, html_path = rebuild_reports(args.dir)
    print(f"wrote {csv_path} and {html_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from wsi_ocelot.demo import run_demo

    return run_demo(
        args.out,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty(),
        ngff=args.ngff,
        cells_table=args.cells_table,
        runtime=args.runtime,
        precision=args.precision,
    )


def cmd_export_spatialdata(args: argparse.Namespace) -> int:
    from wsi_ocelot.outputs.spatialdata_export import export_spatialdata

    path = export_spatialdata(args.result, args.out, overwrite=args.overwrite)
    print(f"wrote {path} (open it with spatialdata.read_zarr)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.pred or args.gt:
        if not (args.pred and args.gt):
            raise WsiOcelotError(
                None, "--pred and --gt go together", "pass both files, or --data/--split/--model"
            )
        from wsi_ocelot.metrics import evaluate_files

        score = evaluate_files(args.pred, args.gt, rank_by=args.rank_by)
        print(json.dumps(score.to_dict(), indent=2) if args.json else score.format_table())
        return 0
    if args.model and not args.data:  # the metrics its training run recorded (the model card)
        from wsi_ocelot.evaluation import format_recorded, recorded_metrics

        recorded = recorded_metrics(args.model)
        print(json.dumps(recorded, indent=2) if args.json else format_recorded(recorded))
        return 0
    if not (args.data and args.model):
        raise WsiOcelotError(
            None,
            "evaluate needs --pred P.json --gt G.json, or --data ROOT --model CKPT (or --model CKPT alone for its recorded metrics)",
            "see `wsi-ocelot evaluate --help`",
        )
    from wsi_ocelot.evaluation import evaluate_dataset

    result = evaluate_dataset(
        args.model,
        args.data,
        args.split,
        device=args.device,
        batch_size=args.batch_size,
        runtime=args.runtime,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from wsi_ocelot.evaluation import format_result

        print(format_result(result))
    return 0


# -- parser -------------------------------------------------------------------------------
def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    """What runs the forward pass: ``run``, ``demo`` and ``evaluate`` (docs/runtimes.md)."""
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=RUNTIMES[0],
        help="what runs the model: auto (the fastest path that keeps the fidelity gate for this model on this CPU, "
        "built once and cached; torch on a GPU), torch, openvino or onnxruntime",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=PRECISIONS[0],
        help="auto, fp32, bf16 (CPUs with AVX-512 BF16/AMX, and GPUs) or int8 (CPU); "
        "--runtime torch --precision fp32 is the plain eager path",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """Options of the per-slide outputs, shared by ``run`` (single slides and cohorts) and ``demo``
    (the choices come from ``wsi_ocelot.constants``, which imports nothing heavy)."""
    p.add_argument(
        "--ngff",
        choices=NGFF_VERSIONS,
        default=NGFF_VERSIONS[0],
        help="OME-NGFF version of tissue.ome.zarr: 0.4 on Zarr v2 (QuPath/Bio-Formats and napari open it) or 0.5 on Zarr v3",
    )
    p.add_argument(
        "--cells-table",
        choices=tuple(CELL_TABLE_FORMATS),
        help="also write the cells as cells.parquet or cells.csv beside cells.geojson (streamed)",
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help as written: examples kept raw, lines never broken inside a word or at a hyphen
    (``wsi-ocelot[spatialdata]``), and a default shown once: added only to options whose help
    does not already say it and whose default is a value (not unset, not a switch)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is None
            or isinstance(action.default, bool)
            or action.default == argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        return text + " (default: %(default)s)"


def _add(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, example: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-ocelot",
        description="Whole-slide cell detection with tissue-prediction injection (OCELOT).",
        epilog="example:\n  wsi-ocelot demo --out demo_out",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"wsi-ocelot {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: wsi-ocelot's debug lines, with the logger's name; -vv: the libraries' (Dask, PyTorch, ...) too",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(
        sub,
        "info",
        cmd_info,
        "Show a slide's format, levels, MPP (and where it came from) and tissue fraction.",
        "wsi-ocelot info slide.svs",
    )
    p.add_argument("slide", help="slide file (any format OpenSlide reads)")
    p.add_argument("--mpp", type=float, help="override the level-0 µm/px")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _add(
        sub,
        "tiles",
        cmd_tiles,
        "Write aligned cell/context tile pairs in the OCELOT dataset layout; with --annotations, "
        "a labelled dataset from slides annotated in QuPath (for fine-tuning).",
        "wsi-ocelot tiles slide.svs --out pairs --limit 20\n"
        "  wsi-ocelot tiles slides/*.svs --annotations qupath_exports/ --like demo --out my_data",
    )
    p.add_argument(
        "slides", nargs="+", metavar="SLIDE", help="slide files (any format OpenSlide reads)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, help="override the level-0 µm/px")
    p.add_argument(
        "--limit",
        type=int,
        help="without --annotations: write at most N pairs per slide, spread evenly over the tissue",
    )
    p.add_argument(
        "--offsets",
        choices=("centre", "ocelot"),
        default="centre",
        help="cell patch position in its context: centred (as the engine) or OCELOT's four positions",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --offsets ocelot")
    p.add_argument(
        "--geometry", help="YAML with a 'geometry:' mapping (cell_mpp, tissue_mpp, tile_size, ...)"
    )
    p.add_argument(
        "--like",
        metavar="CKPT",
        help="take the geometry (MPPs, tile size, context) from a checkpoint, or 'demo', so the "
        "dataset matches the model you will fine-tune",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        help="tile size in px (1024 unless --geometry or --like says otherwise)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="put every slide of this call in this split (with --annotations: build val/test in another call with --append)",
    )
    ann = p.add_argument_group("annotations (QuPath GeoJSON exports)")
    ann.add_argument(
        "--annotations",
        metavar="PATH",
        help="one GeoJSON file (a single slide) or a folder of <slide stem>.geojson files, as QuPath exports them: "
        "Region* rectangles where every nucleus is marked, point annotations per cell class, Tumor polygons "
        "(cancer area) and other classified polygons (background area)",
    )
    ann.add_argument(
        "--class-map",
        metavar="YAML",
        help="QuPath class names per role: tumour, background_cell (points), cancer_area, background_area (polygons), "
        "region, ignore. Unless given: Tumor is tumour; Stroma, Immune cells, Necrosis, Other, Unclassified are "
        "background cells; Tumor polygons are cancer area, other classified polygons background area",
    )
    ann.add_argument(
        "--val-slides",
        nargs="+",
        metavar="STEM",
        help="slides (file stems) held out as the val split; the others train",
    )
    ann.add_argument(
        "--test-slides",
        nargs="+",
        metavar="STEM",
        help="slides (file stems) held out as the test split",
    )
    ann.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="without --split or --val-slides: this fraction of the slides (at least one of two or more) go to val, "
        "picked by a hash of their names; regions of one slide never straddle train and val",
    )
    ann.add_argument(
        "--split-by-region",
        action="store_true",
        help="hold out --val-fraction of each slide's regions instead of whole slides (for a single slide; the val "
        "score then overestimates how the model does on new slides)",
    )
    ann.add_argument(
        "--append",
        action="store_true",
        help="add these slides to the dataset already in --out (same geometry and class map)",
    )
    ann.add_argument(
        "--min-region-fraction",
        type=float,
        default=0.05,
        metavar="F",
        help="skip a cell tile with less than this fraction of its area inside a region",
    )
    ann.add_argument(
        "--no-qupath-crop",
        action="store_true",
        help="coordinates in OpenSlide's uncropped frame (QuPath images added with --no-crop)",
    )

    p = _add(
        sub,
        "run",
        cmd_run,
        "Detect and classify cells on whole slides; write Zarr, QuPath GeoJSON, purity and an overview per slide.",
        "wsi-ocelot run slide.svs --out results --model demo\n  wsi-ocelot run slides/ cohort.csv --out results --model runs/p2i2/best.safetensors --device cuda --batch-size 16\n  wsi-ocelot run cohort.csv --out results --model best.safetensors --scheduler local --dask-workers 2",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="slide files, folders (searched recursively; a DICOM series is one slide) and/or CSV manifests (columns slide, mpp, id)",
    )
    req = p.add_argument_group("required")
    req.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder; each slide gets <out>/<slide-id>/",
    )
    req.add_argument(
        "--model",
        metavar="CKPT",
        help="a checkpoint (.safetensors), or 'demo' for the synthetic-data demo weights "
        "(not for real slides: a warning at start and a note in every output)",
    )
    p.add_argument("--mpp", type=float, help="override the level-0 µm/px of every slide")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_runtime_options(p)
    p.add_argument(
        "--batch-size",
        type=int,
        help="tiles per batch (default: 8 on a CPU, 4-32 from the GPU's memory; halved automatically on GPU out-of-memory)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="tile-reading worker processes (default: the cores available less one, at most 16; the tissue pass uses one more)",
    )
    p.add_argument(
        "--reader",
        choices=READERS,
        default=READERS[0],
        help="slide decoder: openslide (every format) or tifffile (tiled TIFF/SVS: the same pixels, faster; other files fall back to OpenSlide)",
    )
    p.add_argument(
        "--max-unreadable",
        type=float,
        default=DEFAULT_MAX_UNREADABLE,
        metavar="FRACTION",
        help="a slide fails when more than this fraction of its tiles is unreadable (corrupt image data, read twice); "
        "below it each unreadable tile gives no detections, is left out of the tissue area and is counted",
    )
    p.add_argument(
        "--allow-non-brightfield",
        action="store_true",
        help="run slides that do not look like brightfield H&E (fluorescence or dark field, IHC) instead of failing them; "
        "the model reads brightfield H&E only, so their cells and purity mean little",
    )
    p.add_argument(
        "--per-tile",
        action="store_true",
        help="the paper's per-tile path (each cell tile with its own context) instead of two passes",
    )
    p.add_argument(
        "--geojson-gzip", action="store_true", help="write cells.geojson.gz (large slides)"
    )
    p.add_argument(
        "--no-qupath-crop",
        action="store_true",
        help="GeoJSON in OpenSlide's uncropped frame (for QuPath images added with --no-crop)",
    )
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    p.add_argument(
        "--cell-margin",
        type=int,
        metavar="PX",
        help="overlap on each side of a cell tile in cell px, below half the tile (default: the model's own, recorded in its "
        "checkpoint: 48 for the demo)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo slides that manifest.json marks done (default: skip them)",
    )
    p.add_argument(
        "--scheduler",
        help="run on Dask: 'local' starts a cluster here, or a scheduler address such as tcp://10.0.0.5:8786",
    )
    p.add_argument(
        "--dask-workers",
        type=int,
        help="workers of --scheduler local (default: one per GPU, else 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of the forward pass (torch, OpenVINO or ONNX Runtime) per slide process (default: all cores in-process; cores / workers with --scheduler local; "
        "1 on `dask worker` workers, which Dask starts with OMP_NUM_THREADS=1). "
        "CPU results are bit-identical between runs with the same thread count",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times a slide whose Dask worker died is retried before it is reported failed",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip report.html at the end (summary.csv is always written)",
    )
    _add_output_options(p)

    p = _add(
        sub,
        "status",
        cmd_status,
        "Where a batch stands, while it runs or after: counts, throughput, ETA, the failed slides.",
        "wsi-ocelot status results\n  watch -n 60 wsi-ocelot status results",
    )
    p.add_argument("dir", help="the --out folder of a `wsi-ocelot run`")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _add(
        sub,
        "report",
        cmd_report,
        "Rebuild summary.csv and report.html of a batch output folder.",
        "wsi-ocelot report results",
    )
    p.add_argument("dir", help="the --out folder of a `wsi-ocelot run`")

    p = _add(
        sub,
        "synth-slide",
        cmd_synth_slide,
        "Write a synthetic H&E slide (pyramidal TIFF) with cell and cancer-area ground truth.",
        "wsi-ocelot synth-slide synth.tiff --mpp 0.25 --size 4096 4096 --seed 1",
    )
    p.add_argument(
        "out", help="output .tiff path; OUT.cells.csv and OUT.tissue.geojson are written beside it"
    )
    p.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(4096, 4096),
        metavar=("W", "H"),
        help="level-0 size in px",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the tissue layout and cells (same seed, same slide)",
    )
    p.add_argument("--empty", action="store_true", help="a slide with no tissue (glass only)")

    from wsi_ocelot.synthetic.command import DESCRIPTION, EXAMPLE, add_dataset_arguments

    p = _add(sub, "synth-dataset", cmd_synth_dataset, DESCRIPTION, EXAMPLE)
    add_dataset_arguments(p)

    p = _add(
        sub,
        "demo",
        cmd_demo,
        "Run the embedded default end to end on a synthetic slide.",
        "wsi-ocelot demo --out demo_out",
    )
    p.add_argument("--out", default="wsi_ocelot_demo", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--workers",
        type=int,
        help="tile-reading worker processes (default: the cores available less one, at most 16; the tissue pass uses one more)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_runtime_options(p)
    _add_output_options(p)

    p = _add(
        sub,
        "export-spatialdata",
        cmd_export_spatialdata,
        "Write a slide's result as a SpatialData .zarr (cells as points, cancer area as shapes, the tissue map as an image; level-0 px); "
        'needs pip install "wsi-ocelot[spatialdata]".',
        "wsi-ocelot export-spatialdata results/slide-01\n  wsi-ocelot export-spatialdata results/slide-01 --out slide-01.sdata.zarr",
    )
    p.add_argument(
        "result", help="a slide's result folder (<out>/<slide-id>, holding predictions.zarr)"
    )
    p.add_argument("--out", help="the .zarr to write (default: RESULT/spatialdata.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")

    p = _add(
        sub,
        "evaluate",
        cmd_evaluate,
        "Score cell detections with the OCELOT 2023 challenge metric.",
        "wsi-ocelot evaluate --pred cell_classification.json --gt gt.json\n  wsi-ocelot evaluate --data synth_data --split test --model run/best.safetensors\n"
        "  wsi-ocelot evaluate --model run/best.safetensors   # the metrics its model card recorded",
    )
    p.add_argument("--pred", help="predictions (challenge JSON)")
    p.add_argument("--gt", help="ground truth (challenge JSON)")
    p.add_argument("--data", help="OCELOT-layout dataset root")
    p.add_argument("--split", default="test", help="split of --data to score")
    p.add_argument(
        "--model",
        help="checkpoint (.safetensors); alone: print the metrics its training run recorded (model card)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    _add_runtime_options(p)
    p.add_argument(
        "--rank-by",
        choices=("probability", "file_order"),
        default="probability",
        help="order in which predictions claim ground-truth cells: by descending probability (the published rule), "
        "or in file order (what the challenge's scorer effectively did: it ranked by the class column)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    _setup_logging(args.verbose, args.quiet)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm) if on_main_thread else None
    )  # end like Ctrl-C
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except WsiOcelotError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `wsi-ocelot info --json X | head -1`: the reader had enough
        _silence_stdout()
        return EXIT_SIGPIPE
    except KeyboardInterrupt as stop:
        name = getattr(stop, "signal_name", "SIGINT")
        print(
            f"interrupted ({name}): finished slides are kept; run the same command again to go on",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
