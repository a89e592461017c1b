"""`plum bench tokenizer`: the SID-v1 vs SID-v2 ablation (tokenizer/ablation.py).

    plum bench tokenizer [--config TOML] [--movielens DIR] [--steps N] [--variants a,b]

Trains every variant on every data set and writes bench/results/tokenizer.json
(baseline = sidv1, ratio = sidv2 / sidv1).
"""

from __future__ import annotations

from pathlib import Path

from bench.common import write_result
from tokenizer.ablation import VARIANTS, build_parser, ratios, run_ablation


def cli(argv: list[str]) -> int:
    parser = build_parser("plum bench tokenizer")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    try:
        config, metrics = run_ablation(args)
    except ValueError as err:
        parser.error(str(err))
    path = write_result(
        "tokenizer",
        {"tokenizer": config.to_dict(), "variants": VARIANTS},
        metrics,
        {ds: m["sidv1"] for ds, m in metrics.items() if "sidv1" in m},
        ratios(metrics),
        notes="downstream recall: bench/results/trainer-quality.json",
        out_dir=Path(args.out_dir) if args.out_dir else None,
    )
    print(path)
    return 0


__all__ = ["cli"]
