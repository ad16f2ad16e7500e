"""Does fine-tuning on a few annotated regions fix a stain the weights never saw? (issue #20)

The stain domain: synthetic H&E slides rendered with another stain protocol
(``wsi_ocelot.synthetic.layout.STAIN_DOMAINS``, default ``blue-grey``: a blue-grey haematoxylin
under a pale orange eosin). The demo weights never saw it: their training slides jitter the
default protocol only.

1. Slides of that domain: ``--train-slides`` to annotate, ``--val-slides`` whose regions are the
   held-out validation set, ``--test-slides`` never annotated (the unseen slides of the result).
2. Annotations as a pathologist would make them in QuPath: square ``Region*`` rectangles of one
   cell tile's field of view (~205 µm) placed on tissue, every nucleus inside marked (one point set
   per class), the cancer area as ``Tumor`` polygons and the rest as ``Stroma``, written exactly as
   QuPath exports them (``synthetic.qupath_export``), then turned into datasets with
   ``wsi-ocelot tiles --annotations --like demo`` (``tiling.annotated``).
3. For each region count K and seed: K regions drawn from the train slides (spread over them),
   the fine-tuning recipe ``configs/finetune.yaml`` from the demo weights, best epoch on the
   validation regions.
4. Each model (the demo weights, each fine-tuned one) runs the slide engine on every test slide;
   slide mF1 against the ground truth (3 µm), purity error.

Writes ``<results>/<name>.json`` (every run) and a Markdown table beside it (mean and 95 % CI over
seeds per K; the default ``--name`` and ``--results`` give the committed results in training/results). Finished
steps are reused when the command is repeated::

    python -m training.finetune_study --out runs/finetune_study --results training/results \\
        --regions 2 6 12 24 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_ocelot.atomic import write_json, write_text
from wsi_ocelot.sysinfo import cpu_model

log = logging.getLogger("training.finetune_study")

TILE_UM = 1024 * 0.2001953125  # the demo geometry's cell tile: one region per tile


def _slides(
    root: Path, kind: str, n: int, seed0: int, domain: str, size_px: int, mpp: float
) -> list[Any]:
    """``n`` synthetic slides of the domain (written once; reused)."""
    from wsi_ocelot.synthetic import write_synthetic_slide
    from wsi_ocelot.synthetic.layout import STAIN_DOMAINS, SyntheticParams
    from wsi_ocelot.synthetic.slide import make_synthetic_slide

    params = dataclasses.replace(SyntheticParams(), **STAIN_DOMAINS[domain])
    out = []
    for i in range(n):
        path = root / "slides" / kind / f"{domain}_{kind}_{i}.tiff"
        seed = seed0 + i
        if path.is_file():
            s = make_synthetic_slide(mpp=mpp, size=(size_px, size_px), seed=seed, params=params)
            s.tiff_path = path
        else:
            s = write_synthetic_slide(
                path, mpp=mpp, size=(size_px, size_px), seed=seed, params=params
            )
        out.append(s)
    return out


def _region_boxes(
    slide: Any, n: int, rng: np.random.Generator, mpp: float
) -> list[tuple[float, float, float, float]]:
    """``n`` non-overlapping square regions of one tile's field of view, at least 60 % on tissue
    (a pathologist picks regions with cells: on the tumour and on stroma alike)."""
    import shapely

    side = TILE_UM / mpp
    W, H = slide.size
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(5000):
        if len(boxes) == n:
            break
        x, y = rng.uniform(0, W - side), rng.uniform(0, H - side)
        cand = shapely.box(x, y, x + side, y + side)
        if shapely.intersection(cand, slide.tissue).area < 0.6 * cand.area:
            continue
        if any(
            not (x + side <= bx or bx + side <= x or y + side <= by or by + side <= y)
            for bx, by, _, _ in boxes
        ):
            continue
        boxes.append((float(x), float(y), side, side))
    if len(boxes) < n:
        raise RuntimeError(
            f"{slide.tiff_path}: room for {len(boxes)} regions on tissue, {n} asked for: use larger slides (--slide-px)"
        )
    return boxes


def _write_annotations(
    slides: Sequence[Any], boxes: dict[str, list], counts: Sequence[int], folder: Path, seed: int
) -> list[Any]:
    """QuPath exports of the first ``counts[i]`` regions of slide i; returns the slides annotated."""
    from wsi_ocelot.synthetic.qupath_export import write_qupath_annotations

    folder.mkdir(parents=True, exist_ok=True)
    used = []
    for s, k in zip(slides, counts, strict=True):
        stem = Path(s.tiff_path).stem
        if k > 0:
            write_qupath_annotations(
                s, folder / f"{stem}.geojson", boxes[stem][:k], np.random.default_rng(seed)
            )
            used.append(s)
    return used


def _build(slides: Sequence[Any], annotations: Path, out: Path, split: str, append: bool) -> None:
    cmd = [
        sys.executable,
        "-m",
        "wsi_ocelot",
        "-q",
        "tiles",
        *(str(s.tiff_path) for s in slides),
        "--annotations",
        str(annotations),
        "--like",
        "demo",
        "--out",
        str(out),
        "--split",
        split,
    ] + (["--append"] if append else [])
    subprocess.run(cmd, check=True)


def _spread(k: int, n_slides: int) -> list[int]:
    return [k // n_slides + (1 if i < k % n_slides else 0) for i in range(n_slides)]


def _score(model: str, slides: Sequence[Any], out: Path, threads: int) -> dict[str, Any]:
    """Slide mF1 and purity of ``model`` on each test slide (the engine, as a user runs it)."""
    from wsi_ocelot.evaluation import score_slide
    from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
    from wsi_ocelot.outputs import open_predictions

    runner = SlideRunner(
        model,
        EngineConfig(device="cpu", runtime="torch", precision="fp32", workers=1, progress=False),
    )
    per = []
    for s in slides:
        res = runner.run(s.tiff_path, out)
        with open_predictions(res.out_dir / "predictions.zarr") as st:
            c = st.cells()
        pred = np.stack([c["x"], c["y"], c["class"], c["prob"]], 1)
        gt = np.asarray(s.cells, np.float64).reshape(-1, 3)
        sc = score_slide(pred, gt, s.mpp)
        true_purity = float((gt[:, 2] == 2).mean()) if len(gt) else float("nan")
        per.append(
            {
                "slide": Path(s.tiff_path).stem,
                "mf1": round(float(sc.mf1), 4),
                "purity": res.record.purity.purity,
                "true_purity": round(true_purity, 4),
            }
        )
    mf1 = float(np.mean([p["mf1"] for p in per]))
    perr = float(np.mean([abs((p["purity"] or 0.0) - p["true_purity"]) for p in per]))
    return {"mf1": round(mf1, 4), "purity_abs_error": round(perr, 4), "slides": per}


def _ci95(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), half


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default="runs/finetune_study",
        help="work folder (slides, datasets, runs); reused when repeated",
    )
    p.add_argument(
        "--results", default="training/results", help="where <name>.json and the Markdown table go"
    )
    p.add_argument("--name", default="finetune")
    p.add_argument(
        "--domain", default="blue-grey", help="a key of wsi_ocelot.synthetic.layout.STAIN_DOMAINS"
    )
    p.add_argument(
        "--regions", type=int, nargs="+", default=[2, 6, 12, 24], help="annotated region counts K"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-slides", type=int, default=6)
    p.add_argument("--val-slides", type=int, default=2)
    p.add_argument("--val-regions", type=int, default=2, help="regions per validation slide")
    p.add_argument("--test-slides", type=int, default=3)
    p.add_argument(
        "--slide-px", type=int, default=6144, help="side of the train/val slides in level-0 px"
    )
    p.add_argument(
        "--test-px", type=int, default=3072, help="side of the test slides in level-0 px"
    )
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--epochs", type=int, help="override configs/finetune.yaml's epochs")
    p.add_argument("--config", default="configs/finetune.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--note", default="", help="a line for the results (machine state, what else ran)"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only rewrite the Markdown table from the JSON of an earlier run",
    )
    args = p.parse_args(argv)
    if args.report_only:
        results = json.loads((Path(args.results) / f"{args.name}.json").read_text())
        write_text(Path(args.results) / f"{args.name}.md", _markdown(results, args))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    train = _slides(root, "train", args.train_slides, 9100, args.domain, args.slide_px, args.mpp)
    val = _slides(root, "val", args.val_slides, 9200, args.domain, args.slide_px, args.mpp)
    test = _slides(root, "test", args.test_slides, 9300, args.domain, args.test_px, args.mpp)
    k_max = max(args.regions)

    results: dict[str, Any] = {"runs": []}
    res_json = Path(args.results) / f"{args.name}.json"
    if res_json.is_file():
        results = json.loads(res_json.read_text())
    done = {(r["regions"], r["seed"]) for r in results.get("runs", [])}

    if "baseline" not in results:
        t0 = time.perf_counter()
        results["baseline"] = {
            "model": "demo",
            **_score("demo", test, root / "scored" / "demo", args.threads),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        log.info("demo weights on %s: slide mF1 %.4f", args.domain, results["baseline"]["mf1"])
        write_json(res_json, results)
    if "default_stain" not in results:  # the same test slides' layouts in the stain the demo knows
        default = _slides(
            root, "test_default", args.test_slides, 9300, "default", args.test_px, args.mpp
        )
        results["default_stain"] = {
            "model": "demo",
            **_score("demo", default, root / "scored" / "demo_default", args.threads),
        }
        write_json(res_json, results)

    for seed in args.seeds:
        rng = np.random.default_rng(1000 + seed)
        boxes = {
            Path(s.tiff_path).stem: _region_boxes(s, n, rng, args.mpp)
            for s, n in zip(train, _spread(k_max, len(train)), strict=True)
        }
        vboxes = {
            Path(s.tiff_path).stem: _region_boxes(s, args.val_regions, rng, args.mpp) for s in val
        }
        ann = root / f"annotations_seed{seed}"
        val_used = _write_annotations(val, vboxes, [args.val_regions] * len(val), ann / "val", seed)
        for k in sorted(args.regions):
            if (k, seed) in done:
                continue
            data = root / f"data_k{k}_seed{seed}"
            if not (data / "metadata.json").is_file():
                # the first K regions of the seed's draw, spread over the slides (nested: K=6 holds K=2's)
                used = _write_annotations(train, boxes, _spread(k, len(train)), ann / f"k{k}", seed)
                _build(used, ann / f"k{k}", data, "train", append=False)
                _build(val_used, ann / "val", data, "val", append=True)
            run = root / f"run_k{k}_seed{seed}"
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "training.train",
                "--config",
                args.config,
                "--data",
                str(data),
                "--init",
                "demo",
                "--out",
                str(run),
                "--seed",
                str(seed),
                "--device",
                "cpu",
                "--batch-size",
                str(min(4, k)),
            ] + (["--epochs", str(args.epochs)] if args.epochs else [])
            subprocess.run(cmd, check=True)
            train_s = time.perf_counter() - t0
            best = run / "best.safetensors"
            scored = _score(str(best), test, root / "scored" / f"k{k}_seed{seed}", args.threads)
            results["runs"].append(
                {"regions": k, "seed": seed, "train_wall_s": round(train_s, 1), **scored}
            )
            write_json(res_json, results)
            log.info(
                "K=%d seed %d: slide mF1 %.4f (demo %.4f), fine-tuning %.0f s",
                k,
                seed,
                scored["mf1"],
                results["baseline"]["mf1"],
                train_s,
            )

    results["machine"] = (
        f"{platform.processor() or platform.machine()}; {cpu_model()}; torch threads {args.threads}"
    )
    results["note"] = args.note
    results["epochs"] = args.epochs or "the config's"
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    write_json(res_json, results)
    write_text(Path(args.results) / f"{args.name}.md", _markdown(results, args))
    return 0


def _markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    base = results["baseline"]
    lines = [
        f"# Fine-tuning on a few annotated regions of a stain the demo weights never saw ({args.domain})",
        "",
        f"Machine: {results.get('machine')}. {results.get('note') or ''}".strip(),
        "",
        f"Stain domain `{args.domain}` (`wsi_ocelot.synthetic.layout.STAIN_DOMAINS`). Test: {args.test_slides} unseen slides of "
        f"{args.test_px}² px at {args.mpp} µm/px, slide mF1 (OCELOT matching, 3 µm) from the slide engine. Regions: "
        f"~{TILE_UM:.0f} µm squares (one cell tile) on {args.train_slides} annotated slides, validation on "
        f"{args.val_slides * args.val_regions} regions of {args.val_slides} other slides; recipe `{args.config}` from the demo weights "
        f"({results.get('epochs', 'the config')} epochs). Each K uses the first K regions of a seed's draw (nested), spread over the "
        "slides; the 95 % CI is over seeds (which regions, training randomness), the test slides being the same.",
        "",
        f"Demo weights, default stain (same layouts): slide mF1 **{results['default_stain']['mf1']:.4f}**, purity error "
        f"{results['default_stain']['purity_abs_error']:.3f}.  ",
        f"Demo weights, `{args.domain}` stain: slide mF1 **{base['mf1']:.4f}**, purity error {base['purity_abs_error']:.3f}.",
        "",
        "| regions K | seeds | slide mF1 (mean ± 95 % CI) | gain over the demo weights | purity error | fine-tuning wall (s, mean) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in sorted({r["regions"] for r in results["runs"]}):
        rs = [r for r in results["runs"] if r["regions"] == k]
        m, h = _ci95([r["mf1"] for r in rs])
        pe = float(np.mean([r["purity_abs_error"] for r in rs]))
        wall = float(np.mean([r["train_wall_s"] for r in rs]))
        lines.append(
            f"| {k} | {len(rs)} | {m:.4f} ± {h:.4f} | {m - base['mf1']:+.4f} | {pe:.3f} | {wall:.0f} |"
        )
    lines += [
        "",
        f"Whole study: {results.get('wall_s', 0):.0f} s. Every run: `{Path(args.results) / (args.name + '.json')}`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
