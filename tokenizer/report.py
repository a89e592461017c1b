"""`plum tokenizer report`: how good a tokenizer's Semantic IDs are.

uniqueness     share of items whose full L-code tuple no other item has (before the
               service appends disambiguation codes)
utilisation    per level, share of the level's codes used by at least one item
perplexity     per level, exp(entropy) of the code distribution over items (K = uniform)
recon_mse      per input, mean squared error of the reconstruction from all L levels,
               in standardised units (1.0 = no better than predicting the mean)
alignment      share of co-occurring pairs whose first code matches, next to the same
               share for random pairs (the contrastive term should widen the gap)
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def sid_uniqueness(codes: np.ndarray) -> float:
    """Share of rows of codes [N, L] that occur exactly once."""
    if len(codes) == 0:
        return 1.0
    counts = Counter(map(tuple, np.asarray(codes).tolist()))
    return sum(1 for row in map(tuple, codes.tolist()) if counts[row] == 1) / len(codes)


def level_usage(codes: np.ndarray, level_sizes: Sequence[int]) -> list[dict[str, float]]:
    """Per level: codes used, utilisation (used / K) and perplexity exp(H) of the code histogram."""
    out = []
    for lvl, k in enumerate(level_sizes):
        hist = np.bincount(codes[:, lvl], minlength=k).astype(np.float64)
        p = hist[hist > 0] / max(hist.sum(), 1.0)
        out.append(
            {
                "level": lvl + 1,
                "codes": int(k),
                "used": int((hist > 0).sum()),
                "utilisation": float((hist > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0,
            }
        )
    return out


def first_code_alignment(
    codes: np.ndarray, pairs: np.ndarray, rng: np.random.Generator, levels: int = 1
) -> dict[str, float]:
    """Share of pairs sharing their first `levels` codes, for the given pairs and for as
    many random pairs."""
    if len(pairs) == 0:
        return {"pairs": 0, "cooccurring": float("nan"), "random": float("nan")}
    prefix = codes[:, :levels]
    same = np.all(prefix[pairs[:, 0]] == prefix[pairs[:, 1]], axis=1)
    a = rng.integers(len(codes), size=len(pairs))
    b = rng.integers(len(codes), size=len(pairs))
    rand = np.all(prefix[a] == prefix[b], axis=1)
    return {
        "pairs": int(len(pairs)),
        "cooccurring": float(same.mean()),
        "random": float(rand.mean()),
    }


def tokenizer_report(
    tok: Any, item_embeddings: dict[str, np.ndarray], pairs: np.ndarray | None, seed: int = 0
) -> dict[str, Any]:
    """The full report of a TrainedTokenizer over a corpus (and its co-occurring pairs)."""
    out = tok.forward(item_embeddings)
    codes = out["codes"]
    pairs = np.zeros((0, 2), np.int32) if pairs is None else np.asarray(pairs)
    rng = np.random.default_rng(seed)
    return {
        "sid_version": tok.sid_version,
        "items": int(len(codes)),
        "level_sizes": list(tok.level_sizes),
        "uniqueness": sid_uniqueness(codes),
        "distinct_sids": int(len({tuple(r) for r in codes.tolist()})),
        "levels": level_usage(codes, tok.level_sizes),
        "recon_mse": {
            n: float(np.mean((out["recons"][n] - out["inputs"][n]) ** 2))
            for n in sorted(out["inputs"])
        },
        "alignment": first_code_alignment(codes, pairs, rng, levels=1),
        "alignment_2": first_code_alignment(codes, pairs, rng, levels=2),
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = [
        f"tokenizer {rep['sid_version']}: {rep['items']} items, levels {rep['level_sizes']}",
        f"  uniqueness before disambiguation: {rep['uniqueness']:.2%} "
        f"({rep['distinct_sids']} distinct SIDs)",
    ]
    for lv in rep["levels"]:
        lines.append(
            f"  level {lv['level']}: {lv['used']}/{lv['codes']} codes used "
            f"({lv['utilisation']:.0%}), perplexity {lv['perplexity']:.1f}"
        )
    lines.append(
        "  reconstruction MSE (standardised): "
        + ", ".join(f"{k} {v:.3f}" for k, v in rep["recon_mse"].items())
    )
    al = rep["alignment"]
    lines.append(
        f"  first-code alignment: co-occurring {al['cooccurring']:.2%} vs random "
        f"{al['random']:.2%} over {al['pairs']} pairs"
    )
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum tokenizer report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="tokenizer checkpoint directory")
    parser.add_argument("--data", required=True, help="simulator:UPLOADS_JSONL | movielens:DIR")
    parser.add_argument("--pairs", default=None, help="co-occurrence pairs file")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    from tokenizer.checkpoint import load_tokenizer
    from tokenizer.data import load_items

    tok = load_tokenizer(args.checkpoint)
    items = load_items(args.data, args.pairs)
    rep = tokenizer_report(tok, items.embeddings, items.pairs)
    print(format_report(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0
