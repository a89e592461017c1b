"""SID-v1 vs SID-v2 ablation (like PLUM's Table 4), for `plum bench tokenizer`.

Variants, each trained from the same config and seed on the same data:

    sidv1                 one embedding, uniform codebooks, no masking, no contrastive loss
    sidv2                 all inputs, multi-resolution codebooks, progressive masking, contrastive
    sidv2-no-multimodal   sidv2 with only the first input
    sidv2-no-multires     sidv2 with uniform codebooks
    sidv2-no-masking      sidv2 without progressive masking
    sidv2-no-contrastive  sidv2 without the co-occurrence term

Reported per data set and variant: SID uniqueness before disambiguation, first-code
alignment of co-occurring vs random pairs, perplexity per level and training time.
`plum tokenizer ablation` prints the metrics; `plum bench tokenizer` (bench/tokenizer.py)
runs the same and writes bench/results/tokenizer.json (baseline = sidv1, ratio = sidv2 /
sidv1).

The MovieLens data set is read by streams.datasets.movielens, so the variants train on
the embeddings the pipeline publishes on the uploads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from plum.config import REPO_ROOT
from streams.datasets.movielens import MovieLensConfig, load_movielens_config
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.report import tokenizer_report
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "sidv1": {
        "single_input": True,
        "multi_resolution": False,
        "progressive_masking": False,
        "contrastive_weight": 0.0,
    },
    "sidv2": {},
    "sidv2-no-multimodal": {"single_input": True},
    "sidv2-no-multires": {"multi_resolution": False},
    "sidv2-no-masking": {"progressive_masking": False},
    "sidv2-no-contrastive": {"contrastive_weight": 0.0},
}


def run_variant(
    name: str, embeddings: dict[str, np.ndarray], pairs: np.ndarray, config: TokenizerConfig
) -> dict[str, Any]:
    change = dict(VARIANTS[name])
    single = change.pop("single_input", False)
    cfg = dataclasses.replace(config, **change)
    inputs = {k: embeddings[k] for k in sorted(embeddings)[:1]} if single else embeddings
    t0 = time.perf_counter()
    tok = train_tokenizer(inputs, pairs, cfg)
    seconds = time.perf_counter() - t0
    rep = tokenizer_report(tok, inputs, pairs)
    return {
        "inputs": sorted(inputs),
        "level_sizes": rep["level_sizes"],
        "uniqueness": rep["uniqueness"],
        "alignment_cooccurring": rep["alignment"]["cooccurring"],
        "alignment_random": rep["alignment"]["random"],
        "alignment_lift": rep["alignment"]["cooccurring"] / max(rep["alignment"]["random"], 1e-9),
        "perplexity": [lv["perplexity"] for lv in rep["levels"]],
        "train_s": round(seconds, 2),
    }


def datasets(
    movielens_dir: Path | None, seed: int, movielens_cfg: MovieLensConfig | None = None
) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """name -> (item embeddings, co-occurring pairs): a synthetic simulator-like corpus,
    and MovieLens-100k when `movielens_dir` is given."""
    emb, pairs, _ = clustered_items(
        2000,
        {"text": 32, "visual": 32, "audio": 16},
        num_topics=16,
        latent_dim=24,
        num_pairs=5000,
        seed=seed,
    )
    out = {"synthetic-simulator": (emb, pairs)}
    if movielens_dir is not None:
        from tokenizer.data import read_movielens

        ml = read_movielens(movielens_dir, movielens_cfg)
        out["movielens-100k"] = (ml.embeddings, ml.pairs)
    return out


def ratios(metrics: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """sidv2 / sidv1 of uniqueness and alignment, per data set that ran both."""
    return {
        ds: {
            k: m["sidv2"][k] / max(m["sidv1"][k], 1e-9)
            for k in ("uniqueness", "alignment_cooccurring", "alignment_lift")
        }
        for ds, m in metrics.items()
        if "sidv1" in m and "sidv2" in m
    }


def build_parser(prog: str = "plum tokenizer ablation") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        default=None,
        help="TOML with [tokenizer] and [movielens] (default: configs/test.toml)",
    )
    parser.add_argument("--movielens", default=None, help="dir with ml-100k.item / ml-100k.inter")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    return parser


def run_ablation(
    args: argparse.Namespace,
) -> tuple[TokenizerConfig, dict[str, dict[str, dict[str, Any]]]]:
    """(the [tokenizer] config used, data set -> variant -> result) for parsed arguments."""
    config_path = args.config or REPO_ROOT / "configs" / "test.toml"
    config = load_tokenizer_config(config_path, steps=args.steps)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    movielens = Path(args.movielens) if args.movielens else None
    data = datasets(movielens, config.seed, load_movielens_config(config_path))
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for ds, (emb, pairs) in data.items():
        for name in names:
            log.info("ablation %s / %s", ds, name)
            metrics.setdefault(ds, {})[name] = run_variant(name, emb, pairs, config)
            log.info("  -> %s", metrics[ds][name])
    return config, metrics


def cli(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _, metrics = run_ablation(args)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps({"metrics": metrics, "ratio": ratios(metrics)}, indent=1))
    return 0
