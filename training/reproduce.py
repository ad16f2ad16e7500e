"""The paper's protocol (§6.2, Table 5) on any OCELOT-layout dataset: every variant ×
seed trained, the best epoch on validation kept, scored on test; mean and 95 % confidence
interval (Student t over seeds) per variant, written as a Table-5-style Markdown table and
as JSON.

    python -m training.reproduce --data synth_data --out runs/table5 \\
        --variants cell_only pred_to_input pred_to_inter2 tissue_label_leaking --seeds 0 1 2 \\
        --epochs 30 --tile-size 256 --tile-mode resize --encoder resnet34 --batch-size 16

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


def run_one(variant: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any] | None:
    """Train one variant with one seed (or reuse a finished run) and score it on test."""
    from training.train import load_config, main
    from wsi_ocelot.evaluation import evaluate_dataset

    result_file = run_dir / "result.json"
    if result_file.is_file():
        log.info("%s seed %d: done before, reusing %s", variant, seed, result_file)
        return json.loads(result_file.read_text())
    if args.reuse_only:
        log.info("%s seed %d: no result in %s, left out (--reuse-only)", variant, seed, run_dir)
        return None
    overrides = {
        "data": args.data, "out": str(run_dir), "seed": seed, "epochs": args.epochs, "max_steps": args.max_steps,
        "device": args.device, "lr": args.lr, "batch_size": args.batch_size, "tile_size": args.tile_size,
        "tile_mode": args.tile_mode, "workers": args.workers, "encoder": args.encoder, "cache": args.cache or None,
        "eval_every": args.eval_every,
    }
    for key, value in _parse_sets(args.set):
        head, _, rest = key.partition(".")
        if rest:
            overrides.setdefault(head, {})
            overrides[head][rest] = value
        else:
            overrides[head] = value
    cfg = load_config(CONFIGS / f"{variant}.yaml", overrides)
    t0 = time.perf_counter()
    summary = main(cfg)
    train_s = time.perf_counter() - t0
    best = run_dir / "best.safetensors"
    t1 = time.perf_counter()
    if args.cache and (cfg.tile_mode == "resize" or cfg.tile_size is None):
        test = score_split_cached(best, args.data, args.test_split, cfg, device=args.device, batch_size=args.eval_batch_size)
    else:
        test = evaluate_dataset(best, args.data, args.test_split, device=args.device if args.device != "auto" else "auto", batch_size=args.eval_batch_size)
    test_s = time.perf_counter() - t1
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    samples = summary["steps"] * cfg.batch_size
    result = {
        "variant": variant, "seed": seed, "val_mF1": summary["best_mF1"], "test_mF1": test["overall"]["mF1"],
        "test": test["overall"], "test_per_organ": test["per_organ"], "epochs": summary["epochs_done"], "steps": summary["steps"],
        "train_wall_s": round(train_s, 1), "train_samples_per_s": round(samples / max(train_s, 1e-9), 2), "test_wall_s": round(test_s, 1),
        "best_epoch": max((h for h in history if h.get("val_mF1") is not None), key=lambda h: h["val_mF1"], default={}).get("epoch"),
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s seed %d: val mF1 %.4f, test mF1 %.4f (%.0f s)", variant, seed, result["val_mF1"] or 0, result["test_mF1"], train_s)
    return result


def score_split_cached(ckpt: Path, data: str, split: str, cfg: Any, *, device: str, batch_size: int) -> dict[str, Any]:
    """Score ``ckpt`` on ``split`` from the process's decoded-pair cache (decoded once for
    the whole study) in the run's geometry: whole pairs, resized as in training in
    ``resize`` mode. The same points, peaks and matching radius as
    :func:`wsi_ocelot.evaluation.evaluate_dataset`, whose only difference is that it
    resizes without rounding to uint8 and decodes every file again for every run."""
    from torch.utils.data import DataLoader

    from training.data import OcelotDataset, collate
    from training.evaluate_data import predict, score, score_by_organ
    from wsi_ocelot.inference.predictor import resolve_device
    from wsi_ocelot.model import load_model

    dev = resolve_device(device)
    model, info = load_model(ckpt, dev)
    ds = OcelotDataset(data, split, tile_size=cfg.tile_size, tile_mode=cfg.tile_mode, random_crop=False, augment=None,
                       disk_radius=cfg.disk_radius, context_factor=cfg.model.context_factor, cache=True, device_augment=True)
    ds.preload()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    import torch

    amp = torch.bfloat16 if dev.type == "cuda" else None
    pred = predict(model, loader, dev, info.peaks, amp_dtype=amp)
    radius = cfg.metric_radius * ds.scale
    return {"overall": score(pred, radius), "per_organ": score_by_organ(pred, radius), "num_images": len(pred.preds), "split": split,
            "model": str(ckpt), "radius_px": radius, "scorer": "cached"}


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
    return {"splits": sizes, **{k: info[k] for k in ("dataset", "seed", "ambiguity", "generator") if k in info}}


def summarise(results: list[dict[str, Any]], args: argparse.Namespace, wall_s: float) -> dict[str, Any]:
    from wsi_ocelot.sysinfo import describe_machine

    variants: dict[str, Any] = {}
    for v in args.variants:
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        tm, tci = mean_ci95([r["test_mF1"] for r in rs])
        vm, vci = mean_ci95([r["val_mF1"] or 0.0 for r in rs])
        variants[v] = {
            "name": NAMES.get(v, v), "mean": round(tm, 4), "ci95": None if math.isnan(tci) else round(tci, 4),
            "val": {"mean": round(vm, 4), "ci95": None if math.isnan(vci) else round(vci, 4)},
            "seeds": [r["seed"] for r in rs], "test_mF1": [r["test_mF1"] for r in rs], "val_mF1": [r["val_mF1"] for r in rs],
            "train_samples_per_s": round(sum(r["train_samples_per_s"] for r in rs) / len(rs), 2),
            "train_wall_s": round(sum(r["train_wall_s"] for r in rs), 1),
        }
    gap = None
    if "cell_only" in variants and "pred_to_inter2" in variants and variants["cell_only"]["ci95"] is not None and variants["pred_to_inter2"]["ci95"] is not None:
        diff = variants["pred_to_inter2"]["mean"] - variants["cell_only"]["mean"]
        ci_sum = variants["pred_to_inter2"]["ci95"] + variants["cell_only"]["ci95"]
        gap = {"diff": round(diff, 4), "ci_sum": round(ci_sum, 4), "clear": diff > ci_sum}
    return {
        "gap": gap,
        "protocol": "paper §6.2: each variant × seed trained, best validation epoch kept, scored on test; mean ± 95 % CI (Student t) over seeds",
        "machine": describe_machine(args.device if args.device != "auto" else None),
        "data": os.fspath(args.data),
        "data_info": _data_info(args.data),
        "settings": {"epochs": args.epochs, "max_steps": args.max_steps, "tile_size": args.tile_size, "tile_mode": args.tile_mode,
                     "encoder": args.encoder or "per config (resnet34)", "batch_size": args.batch_size, "lr": args.lr or "per config (1e-3)",
                     "seeds": args.seeds, "overrides": dict(_parse_sets(args.set))},
        "wall_s": round(wall_s, 1),
        "variants": variants,
        "runs": results,
    }


def _describe_data(info: dict[str, Any]) -> str:
    parts = []
    if info.get("splits"):
        parts.append("/".join(f"{info['splits'].get(k, 0)}" for k in ("train", "val", "test")) + " train/val/test pairs")
    if "seed" in info:
        parts.append(f"seed {info['seed']}")
    if "ambiguity" in info:
        parts.append(f"ambiguity {info['ambiguity']:g}")
    return f"({', '.join(parts)})" if parts else ""


def to_markdown(table: dict[str, Any]) -> str:
    s = table["settings"]
    lines = [
        "# Table 5 on synthetic data: cell detection mF1 per model",
        "",
        f"Machine: {table['machine']}. Data: `{table['data']}` {_describe_data(table.get('data_info') or {})}. Wall time: {table['wall_s'] / 60:.1f} min.",
        f"Settings: {s['epochs']} epochs (max steps {s['max_steps']}), tile size {s['tile_size']} ({s['tile_mode']}), encoder {s['encoder']}, "
        f"batch {s['batch_size']}, lr {s['lr']}, seeds {s['seeds']}, overrides {s.get('overrides') or {}}; best validation epoch kept, scored on test.",
        "",
        "| Method | Val mF1 | Test mF1 | runs | train samples/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def fmt(m: float, ci: float | None) -> str:
        return f"{100 * m:.2f} ± {100 * ci:.2f}" if ci is not None else f"{100 * m:.2f}"

    for v in table["variants"].values():
        lines.append(f"| {v['name']} | {fmt(v['val']['mean'], v['val']['ci95'])} | {fmt(v['mean'], v['ci95'])} | {len(v['seeds'])} | {v['train_samples_per_s']} |")
    gap = table.get("gap")
    if gap:
        verdict = "above the two CIs together" if gap["clear"] else "inside the confidence intervals"
        lines += ["", f"Pred-to-inter-2 − Cell-only = {100 * gap['diff']:.2f} points; the two 95 % CIs together = {100 * gap['ci_sum']:.2f} points: **{verdict}**."]
    if "demo" in table:
        d = table["demo"]
        lines += ["", f"Demo checkpoint (`{d.get('checkpoint', 'demo')}`): test mF1 {100 * d['mean']:.2f} on `{d.get('data', table['data'])}`."]
    lines += ["", "mF1 in %, mean ± half-width of the 95 % confidence interval over seeds (as in the paper)."]
    if table.get("note"):
        lines += ["", table["note"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="OCELOT-layout dataset root (train/val/test)")
    p.add_argument("--out", required=True, help="folder for the runs (one sub-folder per variant and seed)")
    p.add_argument("--results", default=None, help="where to write synthetic_table5.json/.md (default: --out)")
    p.add_argument("--name", default="synthetic_table5", help="file stem of the results")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(NAMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default: each config's (300)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--tile-mode", choices=("crop", "resize"), default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--cache", action="store_true", help="keep decoded pairs in memory (faster epochs)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--test-split", default="test")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field for every run (YAML value; one level of nesting: peaks.sigma=1.0)")
    p.add_argument("--demo", default=None, help="also score this checkpoint on the test split and record it as the 'demo' entry")
    p.add_argument("--demo-record", default=None, help="a JSON with a recorded 'demo' entry (or an evaluate result) to copy in as the 'demo' entry")
    p.add_argument("--note", nargs="+", default=None, help="a sentence written under the table")
    p.add_argument("--deadline-s", type=float, default=None, help="start no further seed after this many seconds (each seed runs every variant)")
    p.add_argument("--reuse-only", action="store_true", help="train nothing: summarise the runs in --out that finished (e.g. after parallel parts)")
    p.add_argument("--started-at", type=float, default=None, help="Unix time the study began (the wall time is counted from it; default: now)")
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else out
    results_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = args.started_at if args.started_at is not None else time.time()
    wall = lambda: time.time() - started  # noqa: E731
    results: list[dict[str, Any]] = []
    for seed in args.seeds:  # seed-major: an interrupted study still has every variant
        if args.deadline_s is not None and time.perf_counter() - t0 > args.deadline_s:
            log.warning("deadline %.0f s passed: seeds from %d on are not started", args.deadline_s, seed)
            break
        for v in args.variants:
            r = run_one(v, seed, args, out / f"{v}_seed{seed}")
            if r is None:
                continue
            results.append(r)
            table = summarise(results, args, wall())
            (results_dir / f"{args.name}.json").write_text(json.dumps(table, indent=2) + "\n")
            (results_dir / f"{args.name}.md").write_text(to_markdown(table))
    table = summarise(results, args, wall())
    if args.note:
        table["note"] = " ".join(args.note)
    if args.demo_record:
        rec = json.loads(Path(args.demo_record).read_text())
        if "demo" in rec:
            table["demo"] = rec["demo"]
        elif "overall" in rec:
            table["demo"] = {"checkpoint": rec.get("model", "demo"), "data": rec.get("data", "recorded"), "mean": rec["overall"]["mF1"], "test": rec["overall"]}
        else:
            raise SystemExit(f"--demo-record {args.demo_record}: no 'demo' entry and no 'overall' score in it")
    if args.demo:
        from wsi_ocelot.evaluation import evaluate_dataset

        d = evaluate_dataset(args.demo, args.data, args.test_split, device=args.device, batch_size=args.eval_batch_size)
        table["demo"] = {"checkpoint": os.fspath(args.demo), "data": os.fspath(args.data), "mean": d["overall"]["mF1"], "test": d["overall"]}
    (results_dir / f"{args.name}.json").write_text(json.dumps(table, indent=2) + "\n")
    (results_dir / f"{args.name}.md").write_text(to_markdown(table))
    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
