"""SID-v1 vs SID-v2 ablation (like PLUM's Table 4), for `plum bench tokenizer`.

Variants, each trained from the same config and seed on the same data and the same
information (every input modality):

    sidv1                 one concatenated embedding, uniform codebooks, no masking, no
                          contrastive loss
    sidv2                 one encoder per modality fused, multi-resolution codebooks,
                          progressive masking, co-occurrence contrastive term
    sidv2-no-multimodal   sidv2 on the concatenated embedding (one encoder: no fusion)
    sidv2-no-multires     sidv2 with uniform codebooks
    sidv2-no-masking      sidv2 without progressive masking
    sidv2-no-contrastive  sidv2 without the co-occurrence term

Fair by construction:

- uniform codebooks are sized to the multi-resolution code space (the product of the
  level sizes: 128·64·32 = 64³), so v1 and v2 compare equal capacities; each result
  carries its `code_space`;
- a share of the co-occurring pairs (unique unordered pairs) is held out: the
  tokenizers train on the rest, and the headline alignment (first code shared, vs random
  pairs, and their ratio, the lift) is measured on the held-out pairs, with the in-sample
  figures beside it.

Reported per data set and variant: SID uniqueness before disambiguation, held-out and
in-sample first-code alignment with lift over random, perplexity per level and training
time. `plum tokenizer ablation` prints the metrics; `plum bench tokenizer`
(bench/tokenizer.py) runs the same, and the catalogue-growth collision audit
(tokenizer/growth.py), and writes bench/results/tokenizer.json (baseline = sidv1,
ratio = sidv2 / sidv1).

The MovieLens data set is read by streams.datasets.movielens, so the variants train on
the embeddings the pipeline publishes on the uploads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from plum.config import REPO_ROOT
from streams.datasets.movielens import MovieLensConfig, load_movielens_config
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.report import first_code_alignment, level_usage, sid_uniqueness
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)

CONCATENATED = "concatenated"  # the input name of every modality in one embedding
HELD_OUT_SHARE = 0.2  # of the unique co-occurring pairs, never trained on

VARIANTS: dict[str, dict[str, Any]] = {
    "sidv1": {
        "concatenated": True,
        "multi_resolution": False,
        "progressive_masking": False,
        "contrastive_weight": 0.0,
    },
    "sidv2": {},
    "sidv2-no-multimodal": {"concatenated": True},
    "sidv2-no-multires": {"multi_resolution": False},
    "sidv2-no-masking": {"progressive_masking": False},
    "sidv2-no-contrastive": {"contrastive_weight": 0.0},
}


def code_space(level_sizes: tuple[int, ...] | list[int]) -> int:
    """How many distinct L-code SIDs the codebooks can write."""
    return math.prod(level_sizes)


def uniform_at_equal_space(config: TokenizerConfig) -> TokenizerConfig:
    """`config` with uniform codebooks whose code space is as close as an integer size
    allows to the multi-resolution one (exactly equal when L is odd: 128·64·32 = 64³)."""
    multi = dataclasses.replace(config, multi_resolution=True)
    size = round(code_space(multi.level_sizes) ** (1 / config.num_levels))
    return dataclasses.replace(config, multi_resolution=False, codebook_base=size)


def concatenate(embeddings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every modality (in name order) as one embedding: the same information, one input."""
    return {CONCATENATED: np.concatenate([embeddings[k] for k in sorted(embeddings)], axis=1)}


def split_pairs(
    pairs: np.ndarray, held_out_share: float = HELD_OUT_SHARE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(training pairs, held-out pairs) over the unique unordered pairs: no held-out pair
    (in either order) is among the training pairs."""
    pairs = np.asarray(pairs, np.int32).reshape(-1, 2)
    unique = np.unique(np.sort(pairs, axis=1), axis=0)
    order = np.random.default_rng(seed).permutation(len(unique))
    n_held = int(round(held_out_share * len(unique)))
    return unique[np.sort(order[n_held:])], unique[np.sort(order[:n_held])]


def _alignment(codes: np.ndarray, pairs: np.ndarray, seed: int) -> dict[str, float]:
    al = first_code_alignment(codes, pairs, np.random.default_rng(seed))
    return {**al, "lift": al["cooccurring"] / max(al["random"], 1e-9)}


def variant_config(name: str, config: TokenizerConfig) -> tuple[TokenizerConfig, bool]:
    """(`config` changed as variant `name` changes it, whether the variant trains on the
    concatenated embedding); uniform codebooks are sized to `config`'s multi-resolution
    code space. An unknown name raises ValueError."""
    if name not in VARIANTS:
        raise ValueError(f"unknown tokenizer variant {name!r}: one of {sorted(VARIANTS)}")
    change = dict(VARIANTS[name])
    concatenated = bool(change.pop("concatenated", False))
    cfg = dataclasses.replace(config, **change)
    if not cfg.multi_resolution:
        cfg = uniform_at_equal_space(cfg)
    return cfg, concatenated


def run_variant(
    name: str,
    embeddings: dict[str, np.ndarray],
    pairs: np.ndarray,
    held_out: np.ndarray,
    config: TokenizerConfig,
) -> dict[str, Any]:
    """Train variant `name` on `embeddings` with the training `pairs`; alignment on the
    `held_out` pairs (headline) and on the training pairs (in-sample)."""
    cfg, concatenated = variant_config(name, config)
    inputs = concatenate(embeddings) if concatenated else embeddings
    t0 = time.perf_counter()
    tok = train_tokenizer(inputs, pairs, cfg)
    seconds = time.perf_counter() - t0
    codes = np.asarray(tok.encode(inputs))
    held = _alignment(codes, held_out, config.seed)
    in_sample = _alignment(codes, pairs, config.seed)
    return {
        "inputs": sorted(inputs),
        "input_dims": {k: int(v.shape[1]) for k, v in sorted(inputs.items())},
        "level_sizes": list(tok.level_sizes),
        "code_space": code_space(tok.level_sizes),
        "uniqueness": sid_uniqueness(codes),
        "alignment_cooccurring": held["cooccurring"],
        "alignment_random": held["random"],
        "alignment_lift": held["lift"],
        "held_out_pairs": held["pairs"],
        "in_sample_alignment_cooccurring": in_sample["cooccurring"],
        "in_sample_alignment_lift": in_sample["lift"],
        "perplexity": [lv["perplexity"] for lv in level_usage(codes, tok.level_sizes)],
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
    """sidv2 / sidv1 of uniqueness and of held-out alignment (raw and lift over random),
    per data set that ran both."""
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
        train_pairs, held_out = split_pairs(pairs, HELD_OUT_SHARE, config.seed)
        for name in names:
            log.info("ablation %s / %s", ds, name)
            metrics.setdefault(ds, {})[name] = run_variant(name, emb, train_pairs, held_out, config)
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
