"""Does ``--encoder-weights PATH`` pay? Fine-tuning from an encoder pretrained here vs random init.

1. Pretrain: a Cell-only model on one synthetic dataset (``--pretrain-data``), random init.
2. Export its cell branch's encoder (:func:`training.encoders.export_encoder`).
3. Fine-tune on another synthetic dataset (``--data``, other slides) from that encoder file
   and from random weights, same seeds, validating every epoch.
4. Write ``NAME.json`` (every validation curve), the Markdown table (steps to reach ``--target``
   validation mF1 per arm and seed) and ``NAME.png`` (both curves).

::

    python -m training.pretrained_vs_random --pretrain-data pre --data fine --out runs/pvr \\
        --results training/results --seeds 0 1 --epochs 12 --pretrain-epochs 30

Finished runs are reused when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.reproduce import CONFIGS
from wsi_ocelot.atomic import write_json, write_text

log = logging.getLogger("training.pretrained_vs_random")
ARMS = ("pretrained", "random")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in (run_dir / "history.jsonl").read_text().splitlines()
        if line.strip()
    ]


def _train(
    args: argparse.Namespace,
    data: str,
    run_dir: Path,
    *,
    seed: int,
    epochs: int,
    encoder_weights: str,
) -> list[dict[str, Any]]:
    """One Cell-only run (reused when its ``done.json`` exists); returns its history."""
    from training.train import load_config, main

    done = run_dir / "done.json"
    if done.is_file():
        log.info("%s: done before, reusing", run_dir)
        return _history(run_dir)
    if run_dir.exists():  # an interrupted run: start again (history.jsonl appends)
        for f in run_dir.iterdir():
            if f.is_file():
                f.unlink()
    overrides: dict[str, Any] = {
        "data": data,
        "out": str(run_dir),
        "seed": seed,
        "epochs": epochs,
        "device": args.device,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "tile_mode": "resize",
        "workers": 0,
        "cache": True,
        "eval_every": 1,
        "encoder": args.encoder,
        "encoder_weights": encoder_weights,
        "model": {"variant": "cell_only", "encoder": args.encoder, "decoder_channels": 128},
        "peaks": {"sigma": 1.0, "min_distance": 2},
        "augment": {"hed": 0.0, "blur": 0.0, "noise": 0.0},
        "report": {"splits": ["val"], "grid": 2},
    }
    cfg = load_config(CONFIGS / "cell_only.yaml", overrides)
    t0 = time.perf_counter()
    main(cfg)
    write_json(done, {"wall_s": round(time.perf_counter() - t0, 1)})
    return _history(run_dir)


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first optimizer step whose validation mF1 reaches ``target`` (None if never)."""
    return next((step for step, m in curve if m >= target), None)


def summarise(
    args: argparse.Namespace,
    pretrain: list[dict[str, Any]],
    curves: dict[str, dict[int, list[tuple[int, float]]]],
) -> dict[str, Any]:
    from wsi_ocelot.sysinfo import describe_machine

    arms: dict[str, Any] = {}
    for arm, per_seed in curves.items():
        reached = {seed: steps_to(c, args.target) for seed, c in per_seed.items()}
        arms[arm] = {
            "steps_to_target": reached,
            "steps_to": {
                f"{t:g}": {seed: steps_to(c, t) for seed, c in per_seed.items()} for t in args.also
            },
            "best_val_mF1": {seed: max(m for _, m in c) for seed, c in per_seed.items()},
            "curves": {
                seed: [{"step": s, "val_mF1": m} for s, m in c] for seed, c in per_seed.items()
            },
        }
    return {
        "question": "fine-tuning from an encoder pretrained here (cell branch of a model trained on other synthetic slides) vs random init",
        "target_val_mF1": args.target,
        "levels": [f"{t:g}" for t in args.also],
        "machine": describe_machine(args.device if args.device != "auto" else None),
        "command": "python -m training.pretrained_vs_random " + " ".join(sys.argv[1:]),
        "settings": {
            "variant": "cell_only",
            "encoder": args.encoder,
            "tile_size": args.tile_size,
            "tile_mode": "resize",
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "pretrain_epochs": args.pretrain_epochs,
            "seeds": args.seeds,
            "pretrain_data": args.pretrain_data,
            "data": args.data,
        },
        "pretrain": {
            "best_val_mF1": max((h.get("val_mF1") or 0) for h in pretrain),
            "steps": pretrain[-1]["step"],
        },
        "arms": arms,
    }


def to_markdown(table: dict[str, Any]) -> str:
    s = table["settings"]
    lines = [
        "# Fine-tuning from an encoder pretrained here vs random initialisation",
        "",
        f"Machine: {table['machine']}.",
        f"Command: `{table['command']}`.",
        "",
        f"Cell-only, {s['encoder']}, {s['tile_size']} px resized pairs, batch {s['batch_size']}, lr {s['lr']}, {s['epochs']} epochs, "
        f"validation every epoch. The encoder file is the cell branch of a Cell-only model trained from random weights for "
        f"{s['pretrain_epochs']} epochs ({table['pretrain']['steps']} steps, best val mF1 {table['pretrain']['best_val_mF1']:.3f}) on "
        f"`{s['pretrain_data']}` (other synthetic slides than `{s['data']}`).",
        "",
        f"Optimizer steps until the validation mF1 first reaches a level (the stated target {table['target_val_mF1']} in bold; "
        "validation after every epoch, so steps are multiples of the epoch's steps):",
        "",
        "| arm | seed | "
        + " | ".join(
            f"**≥ {t}**" if float(t) == table["target_val_mF1"] else f"≥ {t}"
            for t in table["levels"]
        )
        + " | best val mF1 |",
        "| --- | ---: |" + " ---: |" * len(table["levels"]) + " ---: |",
    ]
    for arm, a in table["arms"].items():
        for seed in a["steps_to_target"]:
            cells = [a["steps_to"][t][seed] for t in table["levels"]]
            lines.append(
                f"| {arm} | {seed} | "
                + " | ".join("not reached" if c is None else str(c) for c in cells)
                + f" | {a['best_val_mF1'][seed]:.3f} |"
            )
    lines += [
        "",
        "Curves: the `.png` beside this file (validation mF1 against optimizer steps); every point in the `.json`.",
    ]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    from training.report import line_plot

    series = []
    for arm, a in table["arms"].items():
        for seed, curve in a["curves"].items():
            series.append(
                (f"{arm} (seed {seed})", [p["step"] for p in curve], [p["val_mF1"] for p in curve])
            )
    line_plot(
        path,
        [("validation mF1", series)],
        title=f"pretrained encoder vs random init (target {table['target_val_mF1']})",
        xlabel="optimizer step",
        hline=table["target_val_mF1"],
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.pretrained_vs_random",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m training.pretrained_vs_random --pretrain-data pre --data fine --out runs/pvr --results training/results",
    )
    p.add_argument("--pretrain-data", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--results", default=None)
    p.add_argument("--name", default="pretrained_vs_random")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--target",
        type=float,
        default=0.5,
        help="the validation mF1 whose first reaching is counted in steps (stated before the runs)",
    )
    p.add_argument(
        "--also",
        type=float,
        nargs="+",
        default=[0.3, 0.4, 0.5, 0.6],
        help="levels reported beside the target",
    )
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.also = sorted(set(args.also) | {args.target})
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from training.encoders import export_encoder

    out = Path(args.out)
    results = Path(args.results) if args.results else out
    results.mkdir(parents=True, exist_ok=True)
    pre_dir = out / "pretrain"
    pretrain = _train(
        args,
        args.pretrain_data,
        pre_dir,
        seed=0,
        epochs=args.pretrain_epochs,
        encoder_weights="none",
    )
    enc = out / "encoder.safetensors"
    if not enc.is_file():
        export_encoder(pre_dir / "best.safetensors", enc, branch="cell")
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {arm: {} for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            hist = _train(
                args,
                args.data,
                out / f"{arm}_seed{seed}",
                seed=seed,
                epochs=args.epochs,
                encoder_weights=str(enc) if arm == "pretrained" else "none",
            )
            curves[arm][seed] = [
                (h["step"], h["val_mF1"]) for h in hist if h.get("val_mF1") is not None
            ]
            table = summarise(args, pretrain, curves)
            write_json(results / f"{args.name}.json", table)
    table = summarise(args, pretrain, curves)
    write_json(results / f"{args.name}.json", table)
    write_text(results / f"{args.name}.md", to_markdown(table))
    plot(table, results / f"{args.name}.png")
    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
