"""`plum bench quality --dataset ml-100k`: the recommender on MovieLens-100k, standard protocol.

The protocol (trainer.movielens_examples.leave_last_out_split, pinned by
tests/integration/test_movielens_protocol.py): ratings stable-sorted on the timestamp
alone, per user the last rating is test and the second to last validation, the rest
training; every one of the 1,682 films is ranked, nothing already seen is masked;
Recall@1/5/10 and NDCG@5/10 (1 / log2(rank + 2), rank from 0) over all 943 users.
Baselines in the same run: popularity over every training interaction (ties to the
smaller item id) and our co-occurrence baseline (trainer.eval).

The model runs the production code path, from nothing:

1. SIDs: SID-v2 (tokenizer.catalogue via bench.trainer_quality.name_items) trained on the
   uploads' content embeddings as published (title text, genres, year) with the
   co-occurrence contrastive term fed with pairs from training examples only;
2. the decoder (trainer.model), step (trainer.step: AdamW, constant LR after warm-up) and
   vocabulary (trainer.vocab) of the continuous trainer, trained with the next-item
   layout (trainer.prompt.next_item_sequence): each user's training ratings cut into
   windows of `history_len + 1` items, the loss on the SID of every next item at once,
   windows re-cut at a random offset every epoch;
3. constrained beam search (trainer.beam via trainer.eval.ModelRanker, prompt layout
   "sequence") over the trie of every film: 0 invalid SIDs by construction, counted
   anyway from an unconstrained search.

Also reported: a beam sweep (Recall@10, distinct first codes in the top 10, seconds per
request), SID uniqueness, codebook usage, and how much of the ranking signal the SID
prefix holds (Recall@10 counting a hit when the first code / first two codes match).

    plum bench quality --dataset ml-100k [--seeds 3] [--eval-on validation] [--set F=V]

Settings: `[quality]` of --config (default configs/demo.toml; optional), then
PLUM_QUALITY__FIELD, then --set. Writes bench/results/quality-ml100k.json with per-seed
numbers and their mean, the wall time, the machine and its load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench.common import bench_config, setting, write_result
from bench.mfu import StepCost, step_only_seconds, utilisation
from bench.trainer_quality import (
    MovieLensInputs,
    movielens_inputs,
    name_items,
    tokenizer_config,
)
from plum.config import REPO_ROOT, default_config_path, load_section
from streams.contracts import schema
from tokenizer.behaviour import behaviour_embeddings
from trainer.config import TINY, VocabConfig
from trainer.cpt import vocab_for_corpus
from trainer.eval import Generation, ModelRanker, candidate_ids, evaluate, fit_baselines
from trainer.model import init_params
from trainer.offline import PADDING, fit
from trainer.prompt import Batch, SidLookup, TrainingSequence, Watch, collate, next_item_sequence
from trainer.step import OptimizerConfig, Stepper, init_state, make_optimizer
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

SECTION = "quality"
DATASETS = {"ml-100k": "quality-ml100k"}
DEFAULT_DATA = REPO_ROOT / "build" / "data" / "ml-100k"
KS = (1, 5, 10)
NDCG_KS = (5, 10)
RANKERS = ("model", "popularity", "cooccurrence")
TARGETS = {"recall@10": 0.15, "ndcg@10": 0.075, "recall@5": 0.09}
NOISE = 0.005  # the noise at 943 users
BEHAVIOUR = "behaviour"  # the experimental tokenizer input's name


@dataclass(frozen=True)
class QualityConfig:
    """[quality]: one MovieLens-100k run (the model's shape and training, the SIDs)."""

    seed: int = 11
    # items in a prompt; training windows are history_len + 1. 20, measured: at an equal
    # CPU budget (480 s, validation) 20 items ran 2x the tokens/s of 50 (shorter attention)
    # and scored R@10 0.107 vs 0.087; 10 items scored the same as 20.
    history_len: int = 20
    # --- tokenizer (bench.trainer_quality.tokenizer_config: configs/test.toml's shape)
    codebook_base: int = 128  # levels 128/64/32
    num_levels: int = 3
    tokenizer_steps: int = 1500
    disambiguation_size: int = 32
    text_vocab_size: int = 300  # no metadata text is trained on here: a small text vocab
    # keeps the output layer (computed at every position) small
    # Experimental, 0 = off (the production inputs): also train the tokenizer on a behaviour
    # embedding of this width (tokenizer/behaviour.py, from training timelines only). The SID
    # service cannot compute it for a new upload, so the production tokenizer lacks it.
    sid_behaviour_dim: int = 0
    # --- model (the trainer's Transformer; the rest of TINY's settings)
    # d64/d256 vs d128/d384 ran at the same tokens/s on the 2-core box (~4.5k/s, overhead-
    # bound) and the `small` preset (d256, 4 layers) 8x slower: the widest of the cheap ones
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 384
    # activations' dtype (parameters, norms, softmax and logits stay float32): bfloat16 on a
    # GPU, where it is the matrix units' native type; float32 on the CPU
    dtype: str = "float32"
    # --- training
    epochs: int = 30  # at most; training also stops when train_budget_s is spent
    train_budget_s: float = 1500.0  # 0 = no budget (the 45-minute bench leaves ~20 for the rest)
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # --- evaluation
    beams: int = 20  # the model's beam for the headline numbers (serving's default)
    sweep_beams: tuple[int, ...] = (1, 4, 8, 16, 20, 50)
    eval_batch: int = 64
    unconstrained_max: int = 300  # examples scored by the unconstrained search
    eval_on: str = "fresh"  # "fresh" = test (the result), "validation" (choosing settings)
    log_every_s: float = 30.0

    def __post_init__(self) -> None:
        if self.eval_on not in ("fresh", "validation"):
            raise ValueError(f"eval_on={self.eval_on!r} must be 'fresh' or 'validation'")
        if self.history_len < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("history_len, epochs and batch_size must be >= 1")
        if any(b < 1 for b in self.sweep_beams) or self.beams < 1:
            raise ValueError("beams must be >= 1")


def load_quality_config(path: Path | str | None, env=None, **overrides: Any) -> QualityConfig:
    return load_section(QualityConfig, path, SECTION, env=env, **overrides)


# ---------------------------------------------------------------------------- training data


def user_watches(inputs: MovieLensInputs) -> list[list[Watch]]:
    """Each user's training ratings as watches, in timeline order."""
    per_user: dict[str, list[Watch]] = defaultdict(list)
    for w in inputs.cpt_watches:  # training ratings only (the leakage test holds them)
        per_user[w.user_id].append(Watch(w.video_id, w.ts, w.watch_ratio, w.watch_time_s))
    return [per_user[u] for u in sorted(per_user)]


def windows(
    users: Sequence[Sequence[Watch]], size: int, rng: np.random.Generator
) -> list[Sequence[Watch]]:
    """Each user's watches cut into consecutive windows of at most `size`, starting at a
    random offset (so across epochs every item is predicted from varying history lengths);
    windows of one item (nothing to predict) are dropped."""
    out: list[Sequence[Watch]] = []
    for seq in users:
        offset = int(rng.integers(0, size)) if len(seq) > size else 0
        cuts = [0, *range(offset or size, len(seq), size), len(seq)]
        out += [seq[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b - a >= 2]
    return out


def epoch_batches(
    users: Sequence[Sequence[Watch]],
    lookup: SidLookup,
    vocab: Vocab,
    cfg: QualityConfig,
    seq_len: int,
    epochs: int,
) -> Iterator[Batch]:
    rng = np.random.default_rng(cfg.seed)
    deadline = time.monotonic() + cfg.train_budget_s if cfg.train_budget_s > 0 else math.inf
    for _ in range(epochs):
        seqs = [
            next_item_sequence(w, lookup, vocab) for w in windows(users, cfg.history_len + 1, rng)
        ]
        seqs = [s for s in seqs if s is not None]
        order = rng.permutation(len(seqs))
        for start in range(0, len(order), cfg.batch_size):
            rows: list[TrainingSequence] = [seqs[i] for i in order[start : start + cfg.batch_size]]
            rows += [PADDING] * (cfg.batch_size - len(rows))
            if time.monotonic() > deadline:
                log.info("training budget of %.0f s spent", cfg.train_budget_s)
                return
            yield collate(rows, seq_len, vocab.pad_id)


def steps_per_epoch(users: Sequence[Sequence[Watch]], cfg: QualityConfig) -> int:
    n = len(windows(users, cfg.history_len + 1, np.random.default_rng(cfg.seed)))
    return math.ceil(n / cfg.batch_size)


# ---------------------------------------------------------------------------- one seed


def sid_report(lookup: SidLookup, level_sizes: Sequence[int], base: dict[str, Any]) -> dict:
    codes = np.asarray(list(lookup.sids.values()))
    usage = {
        f"level{i}": round(len(set(codes[:, i])) / size, 3) for i, size in enumerate(level_sizes)
    }
    return {**base, "codebook_usage": usage}


def prefix_recall(
    ranked: Sequence[Sequence[str]], targets: Sequence[str], lookup: SidLookup, depth: int, k=10
) -> float:
    """Share of queries whose top k holds a film with the target's first `depth` codes."""
    hits = 0
    for r, t in zip(ranked, targets, strict=True):
        want = lookup.sids[t][:depth]
        hits += any(lookup.sids[v][:depth] == want for v in r[:k])
    return hits / len(targets) if targets else 0.0


def beam_sweep(make_ranker, scored, lookup: SidLookup, beams: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    targets = [e.target_video_id for e in scored]
    for b in beams:
        ranker = make_ranker(b, True)
        ranker.generate(scored[: ranker.batch_size])  # compile outside the timing
        t = time.monotonic()
        gen = ranker.generate(scored)
        seconds = time.monotonic() - t
        top = [r[:10] for r in gen.ranked]
        out[str(b)] = {
            "recall@10": sum(t in r for r, t in zip(top, targets, strict=True)) / len(targets),
            "distinct_sids_top10": float(np.mean([len(set(r)) for r in top])),
            "distinct_first_codes_top10": float(
                np.mean([len({lookup.sids[v][0] for v in r}) for r in top])
            ),
            "ms_per_request_batched": round(1000 * seconds / len(scored), 2),
            "batch": ranker.batch_size,
        }
        log.info("beam %d: %s", b, out[str(b)])
    return out


def knee(sweep: dict[str, Any], gain: float = NOISE) -> int:
    """The smallest beam after which widening gains less than `gain` Recall@10."""
    widths = sorted(int(b) for b in sweep)
    for b in widths[:-1]:
        if sweep[str(widths[-1])]["recall@10"] - sweep[str(b)]["recall@10"] < gain:
            return b
    return widths[-1]


@dataclass(frozen=True)
class Fixed:
    """A generation already made (the model's, scored once), as a ranker for evaluate."""

    gen: Generation

    def generate(self, examples: Sequence[Any]) -> Generation:
        if len(examples) != len(self.gen.ranked):
            raise ValueError("Fixed ranker asked for other examples")
        return self.gen

    def rank_many(self, examples: Sequence[Any], k: int) -> list[list[str]]:
        return [r[:k] for r in self.generate(examples).ranked]


def with_behaviour(
    uploads: Sequence[schema.UploadEvent], users: Sequence[Sequence[Watch]], dim: int
) -> list[schema.UploadEvent]:
    """The uploads with a `behaviour` embedding added (from the training timelines)."""
    ids = [u.video_id for u in uploads]
    emb = behaviour_embeddings([[w.video_id for w in seq] for seq in users], ids, dim)
    return [
        dataclasses.replace(u, embeddings={**u.embeddings, BEHAVIOUR: tuple(map(float, row))})
        for u, row in zip(uploads, emb, strict=True)
    ]


def run_seed(cfg: QualityConfig, inputs: MovieLensInputs) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    uploads = inputs.uploads
    if cfg.sid_behaviour_dim > 0:
        uploads = with_behaviour(uploads, user_watches(inputs), cfg.sid_behaviour_dim)
    lookup, level_sizes, base_report = name_items(
        uploads,
        lambda _: True,
        [(a, b) for _, a, b in inputs.tokenizer_pairs],
        tokenizer_config(cfg, cfg.tokenizer_steps, cfg.codebook_base),
        cfg.disambiguation_size,
    )
    timings["sids_s"] = round(time.monotonic() - t0, 1)
    vocab = vocab_for_corpus(
        inputs.uploads,
        VocabConfig(
            text_vocab_size=cfg.text_vocab_size, disambiguation_size=cfg.disambiguation_size
        ),
        level_sizes,
    )
    per_item = vocab.num_sid_slots + vocab.num_feature_tokens
    max_prompt_len = 2 + cfg.history_len * per_item
    seq_len = 2 + (cfg.history_len + 1) * per_item - 1
    model_cfg = dataclasses.replace(
        TINY,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        d_ff=cfg.d_ff,
        dtype=cfg.dtype,
        max_len=max(seq_len, max_prompt_len + vocab.num_sid_slots),
    ).with_vocab(vocab.size)

    t = time.monotonic()
    users = user_watches(inputs)
    per_epoch = steps_per_epoch(users, cfg)
    steps = per_epoch * cfg.epochs
    tx = make_optimizer(
        OptimizerConfig(cfg.learning_rate, cfg.warmup_steps, cfg.weight_decay, grad_clip=1.0)
    )
    stepper = Stepper(model_cfg, tx)
    state = init_state(init_params(model_cfg, jax.random.PRNGKey(cfg.seed)), tx)
    batches = epoch_batches(users, lookup, vocab, cfg, seq_len, cfg.epochs)
    state, result = fit(stepper, state, batches, steps, "quality/next-item", cfg.log_every_s)
    train_s = time.monotonic() - t
    timings["train_s"] = round(train_s, 1)
    params = state.params

    t = time.monotonic()
    cands = candidate_ids(lookup, vocab)
    # evaluate() skips examples whose target has no SID; the model's generation is made
    # once and handed to it, so it must be made for exactly the examples evaluate keeps

    def with_sid(examples: Sequence[Any]) -> list[Any]:
        return [e for e in examples if e.target_video_id in cands]

    scored = with_sid(inputs.scored)

    def make_ranker(beams: int, constrained: bool) -> ModelRanker:
        return ModelRanker(
            model_cfg,
            params,
            vocab,
            lookup,
            beams=beams,
            max_prompt_len=max_prompt_len,
            batch_size=cfg.eval_batch,
            constrained=constrained,
            layout="sequence",
        )

    rankers: dict[str, Any] = {
        "model": make_ranker(cfg.beams, True),
        **fit_baselines(inputs.split.train, cands, interactions=inputs.interactions),
    }
    rankers_model = rankers["model"]
    model_gen = rankers_model.generate(scored)
    rankers["model"] = Fixed(model_gen)
    report = evaluate(rankers, scored, KS, candidates=cands, ndcg_ks=NDCG_KS)
    model_ranked = model_gen.ranked
    targets = [e.target_video_id for e in scored]
    unconstrained = make_ranker(cfg.beams, False).generate(scored[: cfg.unconstrained_max])
    other_name = "validation" if cfg.eval_on == "fresh" else "test"
    other = with_sid(inputs.split.validation if cfg.eval_on == "fresh" else inputs.split.test)
    other_rankers = {
        "model": Fixed(rankers_model.generate(other)),
        **{k: v for k, v in rankers.items() if k != "model"},
    }
    other_report = evaluate(other_rankers, other, KS, candidates=cands, ndcg_ks=NDCG_KS)
    timings["eval_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    sweep = beam_sweep(make_ranker, scored, lookup, cfg.sweep_beams)
    timings["sweep_s"] = round(time.monotonic() - t, 1)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    step_cost = StepCost.of(model_cfg, seq_len)
    # the step alone (a batch made in advance, last: the timed steps consume the state)
    step_alone = step_only_seconds(
        stepper, state, next(epoch_batches(users, lookup, vocab, cfg, seq_len, 1))
    )
    return {
        "rankers": report["rankers"],
        "num_examples": report["num_examples"],
        "num_skipped_no_sid": len(inputs.scored) - len(scored),
        f"also_on_{other_name}": other_report["rankers"],
        "invalid_sids": {
            "constrained_rate": report["rankers"]["model"].get("hallucination_rate", 0.0),
            "unconstrained_rate": unconstrained.hallucination_rate,
            "unconstrained_generated": unconstrained.generated,
        },
        "sid_prefix_signal": {
            "recall@10_first_code": prefix_recall(model_ranked, targets, lookup, 1),
            "recall@10_first_two_codes": prefix_recall(model_ranked, targets, lookup, 2),
            "recall@10_full_sid": report["rankers"]["model"]["recall@10"],
        },
        "sids": sid_report(lookup, level_sizes, base_report),
        "beam_sweep": sweep,
        "beam_knee": knee(sweep),
        "training": {
            "steps": result.steps,
            "steps_per_epoch": per_epoch,
            "epochs": round(result.steps / per_epoch, 2),
            "seconds": round(train_s, 1),
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "input_tokens": result.tokens,
            "input_tokens_per_s": round(result.tokens / train_s, 1),
            "model": model_cfg.to_dict(),
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            **utilisation(step_cost, result.tokens / train_s, "whole_run"),
            "step_alone_seconds": round(step_alone, 6),
            **utilisation(
                step_cost, cfg.batch_size * seq_len / step_alone, "step_alone", padded=True
            ),
        },
        "timings": timings,
    }


# ---------------------------------------------------------------------------- result


def _mean(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def summarise(per_seed: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    metric_names = [f"recall@{k}" for k in KS] + [f"ndcg@{k}" for k in NDCG_KS]
    mean = {
        r: {m: _mean([s["rankers"][r][m] for s in per_seed.values()]) for m in metric_names}
        for r in RANKERS
    }
    model = {m: v["mean"] for m, v in mean["model"].items()}
    cooc = {m: v["mean"] for m, v in mean["cooccurrence"].items()}
    metrics = {
        "model": mean["model"],
        "per_seed": per_seed,
        "targets": {
            m: {"target": t, "model": model[m], "met": model[m] >= t} for m, t in TARGETS.items()
        },
        "above_cooccurrence_by_more_than_noise": model["recall@10"] - cooc["recall@10"] > NOISE,
        "invalid_sid_rate_constrained": max(
            s["invalid_sids"]["constrained_rate"] for s in per_seed.values()
        ),
    }
    baseline = {r: mean[r] for r in ("popularity", "cooccurrence")}
    ratio = {
        "model_recall@10_vs_cooccurrence": round(model["recall@10"] / cooc["recall@10"], 3),
        "model_ndcg@10_vs_cooccurrence": round(model["ndcg@10"] / cooc["ndcg@10"], 3),
    }
    return metrics, baseline, ratio


def run(
    cfg: QualityConfig,
    seeds: int,
    directory: Path,
    dataset: str = "ml-100k",
    out_dir: Path | None = None,
    config_path: Path | str | None = None,
    before: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    started = time.monotonic()
    config_path = config_path or default_config_path()
    load_start = os.getloadavg()
    inputs = movielens_inputs(directory, config_path, cfg.history_len, cfg.eval_on)
    per_seed: dict[str, dict[str, Any]] = {}
    for i in range(seeds):
        seed_cfg = dataclasses.replace(cfg, seed=cfg.seed + i)
        per_seed[str(seed_cfg.seed)] = run_seed(seed_cfg, inputs)
    metrics, baseline, ratio = summarise(per_seed)
    if before is not None:
        metrics["before"] = before
    config = {
        **dataclasses.asdict(cfg),
        "dataset": dataset,
        "seeds": seeds,
        "data_dir": str(directory),
        "config_file": str(config_path),
        "protocol": "leave-last-out, stable timestamp sort (u.data order for ties), "
        "full ranking over all items, seen items not masked",
        "scored_on": "test" if cfg.eval_on == "fresh" else "validation",
        "wall_s": round(time.monotonic() - started, 1),
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    backend = jax.default_backend()
    notes = (
        "One process, the machine shared with other jobs (see load averages): wall times are "
        "upper bounds. Settings chosen on the validation slice (--eval-on validation). "
        "MFU: bench/mfu.py (PaLM accounting; whole_run counts real tokens over the training "
        "wall time, input pipeline included; step_alone every position of one batch shape)."
    )
    name = DATASETS[dataset] + ("" if backend == "cpu" else f"-{backend}")
    path = write_result(name, config, metrics, baseline, ratio, notes=notes, out_dir=out_dir)
    return {"metrics": metrics, "baseline": baseline, "ratio": ratio, "config": config}, path


def _table(doc: dict[str, Any]) -> str:
    rows = {"model": doc["metrics"]["model"], **doc["baseline"]}
    lines = []
    for name, e in rows.items():
        cells = " ".join(f"{m} {v['mean']:.4f}" for m, v in e.items())
        lines.append(f"{name:14s} {cells}")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum bench quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--eval-on", choices=("fresh", "validation"))
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="F=V")
    parser.add_argument("--before", type=Path, default=None, help="a trainer-quality JSON")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    overrides = {"eval_on": args.eval_on, **dict(args.set)}
    if "sweep_beams" in overrides:
        overrides["sweep_beams"] = tuple(overrides["sweep_beams"])
    cfg = bench_config(parser, QualityConfig, SECTION, args.config, overrides)
    from streams.datasets import cli as data_cli

    data_cli.fetch_movielens(args.data_dir)
    before = None
    if args.before is not None:
        doc = json.loads(args.before.read_text())
        before = {
            "source": str(args.before),
            "model": doc["metrics"]["movielens"]["sft_from_cpt"],
            "baselines": doc["baseline"]["movielens"],
            "wall_s": doc["config"]["wall_s"],
            "config": {
                k: doc["config"][k] for k in ("preset", "history_len", "ml_sft_max_examples")
            },
        }
    doc, path = run(cfg, args.seeds, args.data_dir, args.dataset, args.out_dir, args.config, before)
    print(_table(doc))
    print(json.dumps(doc["metrics"]["targets"], indent=1))
    print(f"wrote {path}")
    return 0


__all__ = ["QualityConfig", "cli", "load_quality_config", "run", "windows"]
