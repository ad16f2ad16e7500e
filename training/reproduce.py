"""The paper's protocol (§6.2, Tables 5 and 6) on any OCELOT-layout dataset (the OCELOT
release or synthetic data in its layout):

1. before training, a few timed steps of every variant on the chosen device give an
   estimate of the whole study's time (logged, and ``NAME_estimate.json``);
2. the learning rate is searched on validation within [5e-5, 2e-3] (``--lr-grid``, first
   seed; ``--lr X`` fixes it instead);
3. every variant × seed (5 by default) trained at its chosen rate, the best validation
   epoch kept, scored on test;
4. mean and 95 % confidence interval (Student t over seeds) per variant and per organ
   (the release's ``organ`` metadata), written as Table-5/6-style Markdown and as JSON.

::

    python -m training.reproduce --data /data/ocelot --out runs/table5 --results results \\
        --variants cell_only pred_to_inter2 --device cuda
    python -m training.reproduce --data synth_data --out runs/table5 --seeds 0 1 2 --lr 1e-3 \\
        --epochs 30 --tile-size 256 --tile-mode resize --encoder resnet18 --encoder-weights none

Defaults are the paper's settings (each variant's YAML in ``configs/``: ResNet-34, Adam,
300 epochs, whole 1024 px images), for a GPU box. ``--epochs``, ``--max-steps``,
``--tile-size``/``--tile-mode`` and ``--encoder`` shrink a run to a CPU budget. Finished
runs are skipped when the command is repeated, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_ocelot.atomic import write_json, write_text

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_VARIANTS = ("cell_only", "pred_to_input", "pred_to_inter2", "tissue_label_leaking")
NAMES = {
    "cell_only": "Cell-only",
    "pred_to_input": "Pred-to-input",
    "pred_to_inter1": "Pred-to-inter-1",
    "pred_to_inter2": "Pred-to-inter-2",
    "pred_to_output": "Pred-to-output",
    "feature_sharing": "Feature-sharing",
    "tissue_label_leaking": "Tissue-label leaking",
}

log = logging.getLogger("training.reproduce")  # also when run as __main__


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of the 95 % confidence interval (Student t, n − 1 dof)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def run_config(
    variant: str, seed: int, args: argparse.Namespace, run_dir: Path, lr: float | None = None
) -> Any:
    """The :class:`training.train.TrainConfig` of one run: the variant's YAML, the study's flags, ``--set``."""
    from training.train import load_config

    overrides = {
        "data": args.data,
        "out": str(run_dir),
        "seed": seed,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "device": args.device,
        "lr": lr if lr is not None else args.lr,
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "tile_mode": args.tile_mode,
        "workers": args.workers,
        "encoder": args.encoder,
        "cache": args.cache or None,
        "eval_every": args.eval_every,
        "encoder_weights": args.encoder_weights,
    }
    for key, value in _parse_sets(args.set):
        head, _, rest = key.partition(".")
        if rest:
            overrides.setdefault(head, {})
            overrides[head][rest] = value
        else:
            overrides[head] = value
    return load_config(CONFIGS / f"{variant}.yaml", overrides)


def run_dir_for(out: Path, variant: str, seed: int, lr: float | None) -> Path:
    """``VARIANT_seedS`` with the config's lr, ``VARIANT_lrX_seedS`` with a searched one."""
    return out / (f"{variant}_seed{seed}" if lr is None else f"{variant}_lr{lr:g}_seed{seed}")


def run_one(
    variant: str,
    seed: int,
    args: argparse.Namespace,
    run_dir: Path,
    *,
    lr: float | None = None,
    score_test: bool = True,
) -> dict[str, Any] | None:
    """Train one variant with one seed (or reuse a finished run) and score it on test
    (``score_test``; the learning-rate search looks at validation only)."""
    from training.train import main
    from wsi_ocelot.evaluation import evaluate_dataset

    result_file = run_dir / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if not score_test or result.get("test_mF1") is not None:
            log.info("%s seed %d: done before, reusing %s", variant, seed, result_file)
            return result
    elif args.reuse_only:
        log.info("%s seed %d: no result in %s, left out (--reuse-only)", variant, seed, run_dir)
        return None
    cfg = run_config(variant, seed, args, run_dir, lr)
    if result_file.is_file():  # a search run chosen for the study: only its test score is missing
        result = json.loads(result_file.read_text())
        result.update(_score_test(run_dir, cfg, args, evaluate_dataset))
        write_json(result_file, result)
        return result
    t0 = time.perf_counter()
    summary = main(cfg)
    train_s = time.perf_counter() - t0
    history = [
        json.loads(line)
        for line in (run_dir / "history.jsonl").read_text().splitlines()
        if line.strip()
    ]
    samples = summary["steps"] * cfg.batch_size
    result = {
        "variant": variant,
        "seed": seed,
        "lr": cfg.lr,
        "val_mF1": summary["best_mF1"],
        "test_mF1": None,
        "test": None,
        "test_per_organ": None,
        "epochs": summary["epochs_done"],
        "steps": summary["steps"],
        "train_wall_s": round(train_s, 1),
        "train_samples_per_s": round(samples / max(train_s, 1e-9), 2),
        "best_epoch": max(
            (h for h in history if h.get("val_mF1") is not None),
            key=lambda h: h["val_mF1"],
            default={},
        ).get("epoch"),
    }
    if score_test:
        result.update(_score_test(run_dir, cfg, args, evaluate_dataset))
    write_json(result_file, result)
    log.info(
        "%s seed %d lr %g: val mF1 %.4f, test mF1 %s (%.0f s)",
        variant,
        seed,
        cfg.lr,
        result["val_mF1"] or 0,
        "-" if result["test_mF1"] is None else f"{result['test_mF1']:.4f}",
        train_s,
    )
    return result


def _score_test(
    run_dir: Path, cfg: Any, args: argparse.Namespace, evaluate_dataset: Any
) -> dict[str, Any]:
    """Test scores of the run's best checkpoint: from its model card when it scored the test
    split, else the cached scorer (``--cache``) or :func:`wsi_ocelot.evaluation.evaluate_dataset`."""
    best = run_dir / "best.safetensors"
    t1 = time.perf_counter()
    from wsi_ocelot.model import read_checkpoint_info

    recorded = (read_checkpoint_info(best).metrics.get("per_split") or {}).get(args.test_split)
    if recorded is not None and not args.cache:
        test = recorded
    elif args.cache and (cfg.tile_mode == "resize" or cfg.tile_size is None):
        test = score_split_cached(
            best,
            args.data,
            args.test_split,
            cfg,
            device=args.device,
            batch_size=args.eval_batch_size,
        )
    else:
        test = evaluate_dataset(
            best,
            args.data,
            args.test_split,
            device=args.device if args.device != "auto" else "auto",
            batch_size=args.eval_batch_size,
            runtime="torch",
        )  # the model's own numbers, not a runtime's
    return {
        "test_mF1": test["overall"]["mF1"],
        "test": test["overall"],
        "test_per_organ": test["per_organ"],
        "test_wall_s": round(time.perf_counter() - t1, 1),
    }


def score_split_cached(
    ckpt: Path, data: str, split: str, cfg: Any, *, device: str, batch_size: int
) -> dict[str, Any]:
    """Score ``ckpt`` on ``split`` from the process's decoded-pair cache (decoded once for
    the whole study) in the run's geometry: whole pairs, resized as in training in
    ``resize`` mode. The same points, peaks and matching radius as
    :func:`wsi_ocelot.evaluation.evaluate_dataset`, whose only difference is that it
    resizes without rounding to uint8 and decodes every file again for every run."""
    from torch.utils.data import DataLoader

    from training.data import OcelotDataset, collate
    from training.evaluate_data import predict, score, score_by_organ
    from wsi_ocelot.model import load_model
    from wsi_ocelot.model.device import resolve_device

    dev = resolve_device(device)
    model, info = load_model(ckpt, dev)
    ds = OcelotDataset(
        data,
        split,
        tile_size=cfg.tile_size,
        tile_mode=cfg.tile_mode,
        random_crop=False,
        augment=None,
        disk_radius=cfg.disk_radius,
        context_factor=cfg.model.context_factor,
        cache=True,
        device_augment=True,
    )
    ds.preload()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    import torch

    amp = torch.bfloat16 if dev.type == "cuda" else None
    pred = predict(model, loader, dev, info.peaks, amp_dtype=amp)
    radius = cfg.metric_radius * ds.scale
    return {
        "overall": score(pred, radius),
        "per_organ": score_by_organ(pred, radius),
        "num_images": len(pred.preds),
        "split": split,
        "model": str(ckpt),
        "radius_px": radius,
        "scorer": "cached",
    }


def _parse_sets(items: Sequence[str] | None) -> list[tuple[str, Any]]:
    """``key=value`` (``section.key=value`` for one level of nesting), values parsed as YAML."""
    import yaml

    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: use key=value, e.g. --set peaks.sigma=1.0")
        out.append((key.strip(), yaml.safe_load(value)))
    return out


def _data_info(root: str) -> dict[str, Any]:
    """Split sizes and the generator's settings from ``metadata.json`` (what is there)."""
    try:
        meta = json.loads((Path(root) / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    info = meta.get("general_info") or {}
    sizes: dict[str, int] = {}
    for pair in (meta.get("sample_pairs") or {}).values():
        sub = pair.get("subset")
        if sub:
            sizes[sub] = sizes.get(sub, 0) + 1
    return {
        "splits": sizes,
        **{k: info[k] for k in ("dataset", "seed", "ambiguity", "generator") if k in info},
    }


def _per_organ(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Test mF1 per organ over seeds (paper Table 6): mean, 95 % CI half-width, runs."""
    organs = sorted({o for r in rs for o in (r.get("test_per_organ") or {})})
    out = {}
    for organ in organs:
        vals = [
            r["test_per_organ"][organ]["mF1"]
            for r in rs
            if organ in (r.get("test_per_organ") or {})
        ]
        m, ci = mean_ci95(vals)
        out[organ] = {
            "mean": round(m, 4),
            "ci95": None if math.isnan(ci) else round(ci, 4),
            "n": len(vals),
        }
    return out


def summarise(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    wall_s: float,
    search: dict[str, dict[str, float]] | None = None,
    est: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from wsi_ocelot.sysinfo import describe_machine

    variants: dict[str, Any] = {}
    for v in args.variants:
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        tm, tci = mean_ci95([r["test_mF1"] for r in rs])
        vm, vci = mean_ci95([r["val_mF1"] or 0.0 for r in rs])
        variants[v] = {
            "name": NAMES.get(v, v),
            "mean": round(tm, 4),
            "ci95": None if math.isnan(tci) else round(tci, 4),
            "val": {"mean": round(vm, 4), "ci95": None if math.isnan(vci) else round(vci, 4)},
            "seeds": [r["seed"] for r in rs],
            "test_mF1": [r["test_mF1"] for r in rs],
            "val_mF1": [r["val_mF1"] for r in rs],
            "train_samples_per_s": round(sum(r["train_samples_per_s"] for r in rs) / len(rs), 2),
            "train_wall_s": round(sum(r["train_wall_s"] for r in rs), 1),
            "lr": rs[0].get("lr"),
            "lr_search_val_mF1": (search or {}).get(v),
            "best_epochs": [r.get("best_epoch") for r in rs],
            "per_organ": _per_organ(rs),
        }
    gap = None
    if (
        "cell_only" in variants
        and "pred_to_inter2" in variants
        and variants["cell_only"]["ci95"] is not None
        and variants["pred_to_inter2"]["ci95"] is not None
    ):
        diff = variants["pred_to_inter2"]["mean"] - variants["cell_only"]["mean"]
        ci_sum = variants["pred_to_inter2"]["ci95"] + variants["cell_only"]["ci95"]
        gap = {"diff": round(diff, 4), "ci_sum": round(ci_sum, 4), "clear": diff > ci_sum}
    return {
        "gap": gap,
        "protocol": "paper §6.2: each variant × seed trained, best validation epoch kept, scored on test; mean ± 95 % CI (Student t) over seeds",
        "machine": describe_machine(args.device if args.device != "auto" else None),
        "data": os.fspath(args.data),
        "data_info": _data_info(args.data),
        "settings": {
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "tile_size": args.tile_size,
            "tile_mode": args.tile_mode,
            "encoder": args.encoder or "per config (resnet34)",
            "batch_size": args.batch_size,
            "lr": args.lr
            or (
                f"searched on validation over {[f'{x:g}' for x in args.lr_grid]}"
                if search
                else "per config (1e-3)"
            ),
            "encoder_weights": args.encoder_weights or "per config (imagenet)",
            "seeds": args.seeds,
            "overrides": dict(_parse_sets(args.set)),
        },
        "wall_s": round(wall_s, 1),
        "estimate": est,
        "variants": variants,
        "runs": results,
    }


def _describe_data(info: dict[str, Any]) -> str:
    parts = []
    if info.get("splits"):
        parts.append(
            "/".join(f"{info['splits'].get(k, 0)}" for k in ("train", "val", "test"))
            + " train/val/test pairs"
        )
    if "seed" in info:
        parts.append(f"seed {info['seed']}")
    if "ambiguity" in info:
        parts.append(f"ambiguity {info['ambiguity']:g}")
    return f"({', '.join(parts)})" if parts else ""


def to_markdown(table: dict[str, Any]) -> str:
    s = table["settings"]
    synthetic = "synthetic" in str((table.get("data_info") or {}).get("dataset", "")).lower()
    lines = [
        f"# Table 5 on {'synthetic data' if synthetic else 'the OCELOT layout data'}: cell detection mF1 per model",
        "",
        f"Machine: {table['machine']}. Data: `{table['data']}` {_describe_data(table.get('data_info') or {})}. Wall time: {table['wall_s'] / 60:.1f} min.",
        f"Settings: {s['epochs']} epochs (max steps {s['max_steps']}), tile size {s['tile_size']} ({s['tile_mode']}), encoder {s['encoder']}, "
        f"batch {s['batch_size']}, lr {s['lr']}, encoder weights {s.get('encoder_weights')}, seeds {s['seeds']}, overrides {s.get('overrides') or {}}; "
        "best validation epoch kept, scored on test.",
        "",
        "| Method | lr | Val mF1 | Test mF1 | runs | best epochs | train samples/s |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]

    def fmt(m: float, ci: float | None) -> str:
        return f"{100 * m:.2f} ± {100 * ci:.2f}" if ci is not None else f"{100 * m:.2f}"

    for v in table["variants"].values():
        lr = "-" if v.get("lr") is None else f"{v['lr']:g}"
        epochs = ", ".join(str(e) for e in v.get("best_epochs") or [])
        lines.append(
            f"| {v['name']} | {lr} | {fmt(v['val']['mean'], v['val']['ci95'])} | {fmt(v['mean'], v['ci95'])} | {len(v['seeds'])} | {epochs} | {v['train_samples_per_s']} |"
        )
    organs = sorted({o for v in table["variants"].values() for o in v.get("per_organ") or {}})
    if organs:
        lines += [
            "",
            "Per organ (paper Table 6), test mF1:",
            "",
            "| Method | " + " | ".join(organs) + " |",
            "| --- |" + " ---: |" * len(organs),
        ]
        for v in table["variants"].values():
            po = v.get("per_organ") or {}
            lines.append(
                f"| {v['name']} | "
                + " | ".join(fmt(po[o]["mean"], po[o]["ci95"]) if o in po else "-" for o in organs)
                + " |"
            )
    searched = {
        v["name"]: v["lr_search_val_mF1"]
        for v in table["variants"].values()
        if v.get("lr_search_val_mF1")
    }
    if searched:
        lines += [
            "",
            "Learning-rate search (first seed, best validation epoch), val mF1: "
            + "; ".join(
                f"{name}: " + ", ".join(f"{lr} → {100 * m:.2f}" for lr, m in sc.items())
                for name, sc in searched.items()
            )
            + ".",
        ]
    if table.get("estimate"):
        from training.estimate import format_duration

        lines += [
            "",
            f"Estimated before training (from {table['estimate']['timed_steps']} timed steps per variant): {format_duration(table['estimate']['total_s'])}.",
        ]
    gap = table.get("gap")
    if gap:
        verdict = (
            "above the two CIs together" if gap["clear"] else "inside the confidence intervals"
        )
        lines += [
            "",
            f"Pred-to-inter-2 − Cell-only = {100 * gap['diff']:.2f} points; the two 95 % CIs together = {100 * gap['ci_sum']:.2f} points: **{verdict}**.",
        ]
    if "demo" in table:
        d = table["demo"]
        lines += [
            "",
            f"Demo checkpoint (`{d.get('checkpoint', 'demo')}`): test mF1 {100 * d['mean']:.2f} on `{d.get('data', table['data'])}`.",
        ]
    lines += [
        "",
        "mF1 in %, mean ± half-width of the 95 % confidence interval over seeds (as in the paper).",
    ]
    if table.get("note"):
        lines += ["", table["note"]]
    return "\n".join(lines) + "\n"


def estimate(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Time a few steps of every variant on the chosen device and scale them to the study
    (learning-rate search runs + seed runs, validation, test scoring); logged before training."""
    from training.estimate import format_duration, time_steps
    from wsi_ocelot.datasets import list_pairs
    from wsi_ocelot.errors import DatasetError

    try:
        test_pairs = len(list_pairs(args.data, args.test_split))
    except DatasetError:  # a dataset without the test split fails later, with its own message
        test_pairs = 0
    n_search = len(args.lr_grid) if args.lr is None else 0
    runs = n_search + len(args.seeds) - (1 if n_search else 0)
    per_variant: dict[str, Any] = {}
    for v in args.variants:
        cfg = run_config(v, args.seeds[0], args, out / "_estimate" / v)
        timing = time_steps(cfg, args.estimate_steps)
        run_s = timing.run_s(cfg, test_pairs)
        per_variant[v] = {
            "step_s": round(timing.step_s, 4),
            "val_batch_s": round(timing.val_batch_s, 4),
            "run_s": round(run_s, 1),
            "runs": runs,
            "device": timing.device,
            "batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "train_pairs": timing.train_pairs,
        }
        log.info(
            "estimate %s: %.3f s/step, %.3f s/validation batch (batch %d, %s) → %s per run × %d runs",
            v,
            timing.step_s,
            timing.val_batch_s,
            cfg.batch_size,
            timing.device,
            format_duration(run_s),
            runs,
        )
    total = sum(p["run_s"] * p["runs"] for p in per_variant.values())
    log.info(
        "estimated total: %s on %s for %d variants × %d runs (%d learning-rates searched, %d seeds), from %d timed steps each",
        format_duration(total),
        next(iter(per_variant.values()))["device"] if per_variant else args.device,
        len(args.variants),
        runs,
        n_search,
        len(args.seeds),
        args.estimate_steps,
    )
    return {
        "total_s": round(total, 1),
        "per_variant": per_variant,
        "timed_steps": args.estimate_steps,
    }


def choose_lrs(
    args: argparse.Namespace, out: Path
) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """The paper's learning-rate search on validation (§6.2, within [5e-5, 2e-3]): every
    variant trained once per ``--lr-grid`` value with the first seed; the value with the best
    validation mF1 (best epoch) is used for all seeds (its run is reused for the first seed).
    ``--lr X`` fixes the rate instead (no search: None = the run's own lr). Returns the
    chosen rate per variant and the search's validation mF1 per variant and rate."""
    from training.train import PAPER_LR_RANGE

    if args.lr is not None:
        return {v: None for v in args.variants}, {}
    bad = [lr for lr in args.lr_grid if not PAPER_LR_RANGE[0] <= lr <= PAPER_LR_RANGE[1]]
    if bad:
        raise SystemExit(
            f"--lr-grid {bad}: outside the paper's range [{PAPER_LR_RANGE[0]:g}, {PAPER_LR_RANGE[1]:g}]; pick values inside it"
        )
    chosen: dict[str, float | None] = {}
    search: dict[str, dict[str, float]] = {}
    seed = args.seeds[0]
    for v in args.variants:
        scores: dict[float, float] = {}
        for lr in args.lr_grid:
            r = run_one(v, seed, args, run_dir_for(out, v, seed, lr), lr=lr, score_test=False)
            if r is not None:
                scores[lr] = r["val_mF1"] or 0.0
        if not scores:
            raise SystemExit(
                f"{v}: no learning-rate search run finished in {out}; run without --reuse-only"
            )
        chosen[v] = max(scores, key=lambda lr: scores[lr])
        search[v] = {f"{lr:g}": round(m, 4) for lr, m in scores.items()}
        log.info(
            "%s: learning rate %g chosen on validation (%s)",
            v,
            chosen[v],
            ", ".join(f"{lr:g}: {m:.4f}" for lr, m in scores.items()),
        )
    return chosen, search


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="OCELOT-layout dataset root (train/val/test)")
    p.add_argument(
        "--out", required=True, help="folder for the runs (one sub-folder per variant and seed)"
    )
    p.add_argument(
        "--results", default=None, help="where to write synthetic_table5.json/.md (default: --out)"
    )
    p.add_argument("--name", default="synthetic_table5", help="file stem of the results")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(NAMES))
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="the paper: 5 seeds"
    )
    p.add_argument("--epochs", type=int, default=None, help="default: each config's (300)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--tile-mode", choices=("crop", "resize"), default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="a fixed learning rate (no search)")
    p.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=[5e-5, 2e-4, 6e-4, 2e-3],
        dest="lr_grid",
        help="learning rates searched on validation with the first seed (the paper: within [5e-5, 2e-3])",
    )
    p.add_argument(
        "--encoder-weights",
        dest="encoder_weights",
        default=None,
        metavar="imagenet|PATH|none",
        help="how the encoders start (default: each config's, imagenet)",
    )
    p.add_argument(
        "--estimate-steps",
        type=int,
        default=3,
        help="timed steps per variant for the time estimate",
    )
    p.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    p.add_argument("--no-estimate", action="store_true", help="skip the time estimate")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--cache", action="store_true", help="keep decoded pairs in memory (faster epochs)"
    )
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--test-split", default="test")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field for every run (YAML value; one level of nesting: peaks.sigma=1.0)",
    )
    p.add_argument(
        "--demo",
        default=None,
        help="also score this checkpoint on the test split and record it as the 'demo' entry",
    )
    p.add_argument(
        "--demo-record",
        default=None,
        help="a JSON with a recorded 'demo' entry (or an evaluate result) to copy in as the 'demo' entry",
    )
    p.add_argument("--note", nargs="+", default=None, help="a sentence written under the table")
    p.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no further seed after this many seconds (each seed runs every variant)",
    )
    p.add_argument(
        "--reuse-only",
        action="store_true",
        help="train nothing: summarise the runs in --out that finished (e.g. after parallel parts)",
    )
    p.add_argument(
        "--started-at",
        type=float,
        default=None,
        help="Unix time the study began (the wall time is counted from it; default: now)",
    )
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else out
    results_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = args.started_at if args.started_at is not None else time.time()
    wall = lambda: time.time() - started  # noqa: E731
    est = None if args.no_estimate or args.reuse_only else estimate(args, out)
    if est is not None:
        write_json(results_dir / f"{args.name}_estimate.json", est)
    if args.estimate_only:
        return 0
    lrs, search = choose_lrs(args, out)
    results: list[dict[str, Any]] = []
    for seed in args.seeds:  # seed-major: an interrupted study still has every variant
        if args.deadline_s is not None and time.perf_counter() - t0 > args.deadline_s:
            log.warning(
                "deadline %.0f s passed: seeds from %d on are not started", args.deadline_s, seed
            )
            break
        for v in args.variants:
            r = run_one(v, seed, args, run_dir_for(out, v, seed, lrs[v]), lr=lrs[v])
            if r is None:
                continue
            results.append(r)
            table = summarise(results, args, wall(), search, est)
            write_json(results_dir / f"{args.name}.json", table)
            write_text(results_dir / f"{args.name}.md", to_markdown(table))
    table = summarise(results, args, wall(), search, est)
    if args.note:
        table["note"] = " ".join(args.note)
    if args.demo_record:
        rec = json.loads(Path(args.demo_record).read_text())
        if "demo" in rec:
            table["demo"] = rec["demo"]
        elif "overall" in rec:
            table["demo"] = {
                "checkpoint": rec.get("model", "demo"),
                "data": rec.get("data", "recorded"),
                "mean": rec["overall"]["mF1"],
                "test": rec["overall"],
            }
        else:
            raise SystemExit(
                f"--demo-record {args.demo_record}: no 'demo' entry and no 'overall' score in it"
            )
    if args.demo:
        from wsi_ocelot.evaluation import evaluate_dataset

        d = evaluate_dataset(
            args.demo,
            args.data,
            args.test_split,
            device=args.device,
            batch_size=args.eval_batch_size,
            runtime="torch",
        )
        table["demo"] = {
            "checkpoint": os.fspath(args.demo),
            "data": os.fspath(args.data),
            "mean": d["overall"]["mF1"],
            "test": d["overall"],
        }
    write_json(results_dir / f"{args.name}.json", table)
    write_text(results_dir / f"{args.name}.md", to_markdown(table))
    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
