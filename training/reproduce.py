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

log = logging.getLogger("training.reproduce")


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


def run_one(variant: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train one variant with one seed (or reuse a finished run) and score it on test."""
    from training.train import load_config, main
    from wsi_ocelot.evaluation import evaluate_dataset

    result_file = run_dir / "result.json"
    if result_file.is_file():
        log.info("%s seed %d: done before, reusing %s", variant, seed, result_file)
        return json.loads(result_file.read_text())
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
    test = evaluate_dataset(best, args.data, args.test_split, device=args.device if args.device != "auto" else "auto", batch_size=args.eval_batch_size)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    samples = summary["steps"] * cfg.batch_size
    result = {
        "variant": variant, "seed": seed, "val_mF1": summary["best_mF1"], "test_mF1": test["overall"]["mF1"],
        "test": test["overall"], "test_per_organ": test["per_organ"], "epochs": summary["epochs_done"], "steps": summary["steps"],
        "train_wall_s": round(train_s, 1), "train_samples_per_s": round(samples / max(train_s, 1e-9), 2),
        "best_epoch": max((h for h in history if h.get("val_mF1") is not None), key=lambda h: h["val_mF1"], default={}).get("epoch"),
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s seed %d: val mF1 %.4f, test mF1 %.4f (%.0f s)", variant, seed, result["val_mF1"] or 0, result["test_mF1"], train_s)
    return result


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
    return {
        "protocol": "paper §6.2: each variant × seed trained, best validation epoch kept, scored on test; mean ± 95 % CI (Student t) over seeds",
        "machine": describe_machine(args.device if args.device != "auto" else None),
        "data": os.fspath(args.data),
        "settings": {"epochs": args.epochs, "max_steps": args.max_steps, "tile_size": args.tile_size, "tile_mode": args.tile_mode,
                     "encoder": args.encoder or "per config (resnet34)", "batch_size": args.batch_size, "lr": args.lr or "per config (1e-3)",
                     "seeds": args.seeds, "overrides": dict(_parse_sets(args.set))},
        "wall_s": round(wall_s, 1),
        "variants": variants,
        "runs": results,
    }


def to_markdown(table: dict[str, Any]) -> str:
    s = table["settings"]
    lines = [
        "# Table 5 on synthetic data: cell detection mF1 per model",
        "",
        f"Machine: {table['machine']}. Data: `{table['data']}`. Wall time: {table['wall_s'] / 60:.1f} min.",
        f"Settings: {s['epochs']} epochs (max steps {s['max_steps']}), tile size {s['tile_size']} ({s['tile_mode']}), encoder {s['encoder']}, "
        f"batch {s['batch_size']}, lr {s['lr']}, seeds {s['seeds']}; best validation epoch kept, scored on test.",
        "",
        "| Method | Val mF1 | Test mF1 | runs | train samples/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def fmt(m: float, ci: float | None) -> str:
        return f"{100 * m:.2f} ± {100 * ci:.2f}" if ci is not None else f"{100 * m:.2f}"

    for v in table["variants"].values():
        lines.append(f"| {v['name']} | {fmt(v['val']['mean'], v['val']['ci95'])} | {fmt(v['mean'], v['ci95'])} | {len(v['seeds'])} | {v['train_samples_per_s']} |")
    if "demo" in table:
        d = table["demo"]
        lines += ["", f"Demo checkpoint (`{d.get('checkpoint', 'demo')}`): test mF1 {100 * d['mean']:.2f} on `{d.get('data', table['data'])}`."]
    lines += ["", "mF1 in %, mean ± half-width of the 95 % confidence interval over seeds (as in the paper)."]
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
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else out
    results_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for seed in args.seeds:  # seed-major: an interrupted study still has every variant
        for v in args.variants:
            results.append(run_one(v, seed, args, out / f"{v}_seed{seed}"))
            table = summarise(results, args, time.perf_counter() - t0)
            (results_dir / f"{args.name}.json").write_text(json.dumps(table, indent=2) + "\n")
            (results_dir / f"{args.name}.md").write_text(to_markdown(table))
    table = summarise(results, args, time.perf_counter() - t0)
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
