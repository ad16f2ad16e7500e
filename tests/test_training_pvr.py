"""``training.pretrained_vs_random``: steps to a validation level and its table (the
benchmark itself runs for minutes; its committed result is training/results/pretrained_vs_random.md)."""

from __future__ import annotations

from training.pretrained_vs_random import parse_args, steps_to, summarise, to_markdown


def test_steps_to_and_table() -> None:
    assert steps_to([(4, 0.1), (8, 0.45), (12, 0.52), (16, 0.4)], 0.5) == 12
    assert steps_to([(4, 0.1)], 0.5) is None
    args = parse_args(
        [
            "--pretrain-data",
            "a",
            "--data",
            "b",
            "--out",
            "o",
            "--seeds",
            "0",
            "--target",
            "0.5",
            "--also",
            "0.3",
        ]
    )
    args.also = sorted(set(args.also) | {args.target})
    curves = {"pretrained": {0: [(4, 0.35), (8, 0.55)]}, "random": {0: [(4, 0.05), (8, 0.31)]}}
    table = summarise(args, [{"step": 30, "val_mF1": 0.6}], curves)
    assert table["arms"]["pretrained"]["steps_to_target"] == {0: 8} and table["arms"]["random"][
        "steps_to"
    ]["0.3"] == {0: 8}
    md = to_markdown(table)
    assert (
        "| pretrained | 0 | 4 | 8 | 0.550 |" in md
        and "| random | 0 | 8 | not reached | 0.310 |" in md
        and "**≥ 0.5**" in md
    )
