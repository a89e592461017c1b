"""`plum bench trainer-quality`: does the trained recommender beat the baselines?

One seeded, in-process run (no Kafka, no Flink: the same pure logic they run):

1. simulator stream (streams.simulator.cli.Simulator) -> valid uploads and watches; watches ->
   reward-sampled SFT examples with the Flink job's per-user logic
   (streams.flink.timeline admit/release, streams.flink.reward) and co-occurrence pairs;
2. split by event time: `fresh_split(examples, holdout)` (train = older, fresh = newest);
3. SID-v2 tokenizer trained on the content embeddings of the uploads before the cut
   (contrastive pairs from the watches before the cut), then frozen and applied to every
   upload in arrival order; disambiguation code = order of arrival within the L-code
   prefix (what tokenizer/index.py SidIndex.assign does);
4. CPT (trainer/cpt.py) on metadata of the uploads and watches before the cut;
5. continuous SFT from the CPT params over the training examples in time order
   (constant LR after warm-up), and the same SFT budget from random init (the paper's
   Table 5 ablation: CPT vs no CPT);
6. `evaluate` on the fresh slice: popularity, co-occurrence, sft_from_cpt,
   sft_from_random, all on the same examples and candidates; hallucination rate of an
   unconstrained beam search over the CPT+SFT model; on the simulator also a reference
   ranker that knows the hidden generative model (`oracle_ground_truth`: roughly the
   best recall any ranker can get; not a baseline, never in the ratios);
7. MovieLens-100k (`--movielens DIR`): the same with `load_movielens_examples` and
   RecBole-style leave-last-out (train / validation / test; scored on test).

`--eval-on validation` carves the newest `holdout` of the training slice as a validation
slice (MovieLens: the leave-last-out validation example) and scores there instead; the
settings were chosen that way, never by looking at the fresh/test slice.

    plum bench trainer-quality [--events N] [--preset tiny|small] [--cpt-steps N]
        [--sft-passes N] [--movielens /tmp/ml100k] [--eval-on fresh|validation]

Writes bench/results/trainer-quality.json: metrics per ranker per dataset, the config,
wall times, and ratio = model recall@10 / best baseline recall@10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench.common import write_result
from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.flink import timeline as ut
from streams.flink.reward import RewardWeights
from tokenizer.config import TokenizerConfig
from tokenizer.report import first_code_alignment, sid_uniqueness
from tokenizer.train import train_tokenizer
from trainer.config import VocabConfig, model_preset
from trainer.cpt import CptConfig, build_corpus, load_model, train_cpt, vocab_for_corpus
from trainer.eval import (
    ModelRanker,
    candidate_ids,
    evaluate,
    fit_baselines,
    fresh_split,
    leave_last_out,
)
from trainer.model import init_params
from trainer.prompt import SidLookup, TrainingSequence, UnknownTargetError, collate, sft_sequence
from trainer.step import OptimizerConfig, Stepper, init_state, make_optimizer
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

NAME = "trainer-quality"
BASELINES = ("popularity", "cooccurrence")
MODELS = ("sft_from_cpt", "sft_from_random")
NOTES = (
    "Settings were chosen on validation slices carved from the training data "
    "(--eval-on validation: simulator = newest 10% of the training slice; MovieLens = the "
    "leave-last-out validation example), never on the fresh/test slice. Baselines are "
    "fitted on the whole training slice; the model's SFT on MovieLens sees an evenly "
    "spaced subset (ml_sft_max_examples) for the CPU budget, a handicap for the model "
    "only. oracle_ground_truth (simulator) ranks with the simulator's hidden generative "
    "model: a reference ceiling, not a baseline, never in the ratios."
)


@dataclass(frozen=True)
class QualityConfig:
    seed: int = 11
    # --- simulator (streams/simulator_config.py); everything else at its defaults
    events: int = 60_000  # records: initial uploads + watches + new uploads
    num_users: int = 2000
    num_topics: int = 16
    initial_videos: int = 600
    new_uploads_per_sim_minute: float = 2.0
    # --- per-user timeline (the Flink job's [flink] settings)
    history_len: int = 8
    session_gap_ms: int = 30 * 60_000
    pair_prev_k: int = 3
    holdout: float = 0.1  # fresh_split fraction (and the validation fraction of train)
    # --- tokenizer (small codebooks for a catalogue of ~1-2k items)
    codebook_base: int = 64  # levels 64/32/16
    num_levels: int = 3
    tokenizer_steps: int = 1000
    disambiguation_size: int = 32
    text_vocab_size: int = 1024
    # --- model and training
    preset: str = "tiny"
    max_prompt_len: int = 68  # 8 history items x 7 tokens + <bos><hist> + ctx(4) + <tgt>
    batch_size: int = 32
    cpt_steps: int = 400
    cpt_lr: float = 1e-3
    sft_passes: int = 2
    sft_lr: float = 1e-3
    sft_warmup: int = 50
    # --- evaluation
    beams: int = 10
    eval_max: int = 2000  # evaluate at most this many examples (evenly spaced in time)
    hallucination_max: int = 300  # examples scored by the unconstrained search
    eval_batch: int = 64
    eval_on: str = "fresh"  # "fresh" (the result) or "validation" (choosing settings)
    # --- MovieLens (only with --movielens)
    ml_codebook_base: int = 128  # 1682 films: levels 128/64/32
    ml_tokenizer_steps: int = 1500
    ml_sft_passes: int = 1
    ml_sft_max_examples: int = 24_000  # SFT on N training examples evenly spaced in time
    # (CPU budget; 0 = all)
    log_every_s: float = 15.0

    def __post_init__(self) -> None:
        if self.eval_on not in ("fresh", "validation"):
            raise ValueError(f"eval_on={self.eval_on!r} must be 'fresh' or 'validation'")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout={self.holdout} must be in (0, 1)")
        if self.sft_passes < 0 or self.ml_sft_passes < 0 or self.cpt_steps < 1:
            raise ValueError("sft passes must be >= 0 and cpt_steps >= 1")

    @property
    def seq_len(self) -> int:
        return self.max_prompt_len + self.num_levels + 1  # prompt + the target's SID tokens

    def tokenizer_config(self, steps: int, codebook_base: int | None = None) -> TokenizerConfig:
        # the configs/test.toml [tokenizer] shape, which gives unique SIDs on ~1k items
        return TokenizerConfig(
            encoder_hidden=(64,),
            modality_dim=32,
            latent_dim=16,
            decoder_hidden=(64,),
            codebook_base=codebook_base or self.codebook_base,
            num_levels=self.num_levels,
            batch_size=256,
            pair_batch_size=128,
            steps=steps,
            seed=self.seed,
            dead_code_window=100,
            log_every=max(steps // 4, 1),
        )


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SimData:
    uploads: list[schema.UploadEvent]
    watches: list[schema.WatchEvent]
    examples: list[schema.SftExample]
    pairs: list[tuple[str, str, int]]  # (a, b, ts) co-watched within a session
    truth: dict[str, Any]  # the simulator's ground truth (streams/simulator_stream.py)


def simulate(cfg: QualityConfig) -> SimData:
    """Simulator stream -> uploads, watches, SFT examples and pairs, as the Flink job would."""
    from streams.simulator.cli import VALID, Simulator, load_config

    sim_cfg = load_config(
        REPO_ROOT / "configs" / "demo.toml",
        env={},
        seed=cfg.seed,
        events=cfg.events,
        num_users=cfg.num_users,
        num_topics=cfg.num_topics,
        latent_dim=max(24, cfg.num_topics),
        initial_videos=cfg.initial_videos,
        new_uploads_per_sim_minute=cfg.new_uploads_per_sim_minute,
        rate=0.0,
        bad_fraction=0.0,
        out_of_order_fraction=0.0,
    )
    params = ut.TimelineParams(
        allowed_lateness_ms=60_000,
        session_gap_ms=cfg.session_gap_ms,
        history_len=cfg.history_len,
        pair_prev_k=cfg.pair_prev_k,
        weights=RewardWeights(),
    )
    r_max = params.weights.max_reward()
    limits = schema.ValidationLimits(now_ms=2**62)
    uploads: list[schema.UploadEvent] = []
    watches: list[schema.WatchEvent] = []
    examples: list[schema.SftExample] = []
    pairs: list[tuple[str, str, int]] = []
    states: dict[str, list] = {}
    sim = Simulator(sim_cfg)
    for rec in sim.records():
        if rec.kind != VALID:
            continue
        if rec.topic.endswith("uploads.v1") or rec.topic.endswith("uploads.replay.v1"):
            uploads.append(schema.decode_upload(rec.value, limits))
            continue
        w = schema.decode_watch(rec.value, limits)
        watches.append(w)
        st = states.setdefault(w.user_id, ut.new_state())
        if not ut.admit(st, ut.watch_tuple(w), params.allowed_lateness_ms):
            continue
        # in-order stream: the watermark is the watch's own ts, so release at once
        got_pairs, got = ut.release(st, w.ts, params, r_max)
        pairs += got_pairs
        for ev, r, hist in got:
            examples.append(
                schema.SftExample(
                    ev[ut.EVENT_ID],
                    w.user_id,
                    tuple(schema.HistoryItem(*h) for h in hist),
                    ev[ut.CONTEXT],
                    ev[ut.VIDEO_ID],
                    r,
                    ev[ut.TS],
                )
            )
    log.info(
        "simulated %d uploads, %d watches -> %d SFT examples, %d pairs",
        len(uploads),
        len(watches),
        len(examples),
        len(pairs),
    )
    return SimData(uploads, watches, examples, pairs, sim.ground_truth())


class OracleRanker:
    """A reference, not a baseline: ranks by the simulator's own (hidden) generative
    probabilities, approximately the best any ranker can do on this stream.

    score(v) = P(topic(v) | context, user) * popularity(v) / popularity of topic(v)
               * sigmoid(match_scale * (user_latent . latent(v) - match_center))

    with P(topic) = stickiness on the context video's topic + (1 - stickiness) * the
    user's interest mixture (explore_fraction of it uniform): the simulator's session
    model (streams/simulator_stream.py) times its click model without the noise.
    """

    def __init__(self, truth: dict[str, Any], candidates: Sequence[str]) -> None:
        c = truth["config"]
        self.stick = float(c["session_topic_stickiness"])
        self.explore = float(c["explore_fraction"])
        self.scale, self.center = float(c["match_scale"]), float(c["match_center"])
        videos = {v["video_id"]: v for v in truth["videos"]}
        self.ids = [v for v in sorted(candidates) if v in videos]
        self.topic_of = {v: int(videos[v]["topic"]) for v in videos}
        topics = np.asarray([self.topic_of[v] for v in self.ids])
        pop = np.asarray([videos[v]["popularity"] for v in self.ids], np.float64)
        self.n_topics = len(truth["topics"])
        per_topic = np.bincount(topics, weights=pop, minlength=self.n_topics)
        self.topics = topics
        self.norm_pop = pop / np.maximum(per_topic[topics], 1e-12)
        self.latent = np.asarray([videos[v]["latent"] for v in self.ids])  # [items, d]
        centroids = np.asarray([t["centroid"] for t in truth["topics"]])
        self.interests = {u["user_id"]: np.asarray(u["interests"]) for u in truth["users"]}
        self.user_latent = {u: i @ centroids for u, i in self.interests.items()}

    def rank_many(self, examples: Sequence[schema.SftExample], k: int) -> list[list[str]]:
        out = []
        uniform = np.full(self.n_topics, 1.0 / self.n_topics)
        for e in examples:
            interests = self.interests[e.user_id]
            p = (1 - self.explore) * interests / interests.sum() + self.explore * uniform
            ctx = self.topic_of.get(e.context_video_id) if e.context_video_id else None
            if ctx is not None:
                p = (1 - self.stick) * p
                p[ctx] += self.stick
            logit = self.scale * (self.latent @ self.user_latent[e.user_id] - self.center)
            score = p[self.topics] * self.norm_pop / (1 + np.exp(-logit))
            top = np.argsort(-score, kind="stable")[:k]
            out.append([self.ids[i] for i in top])
        return out


# ---------------------------------------------------------------------------- SIDs


def assign_sids(
    arrival_order: Sequence[str], codes: np.ndarray, disambiguation_size: int
) -> tuple[dict[str, tuple[int, ...]], int]:
    """L codes + the order of arrival within the L-code prefix (SidIndex.assign's rule).
    Returns (video -> SID, videos left without a SID because the prefix was full)."""
    next_code: Counter[tuple[int, ...]] = Counter()
    sids: dict[str, tuple[int, ...]] = {}
    overflow = 0
    for vid, row in zip(arrival_order, codes.tolist(), strict=True):
        if vid in sids:
            continue
        prefix = tuple(int(c) for c in row)
        k = next_code[prefix]
        if k >= disambiguation_size:
            overflow += 1
            continue
        next_code[prefix] = k + 1
        sids[vid] = (*prefix, k)
    return sids, overflow


def train_sids(
    ids: Sequence[str],
    embeddings: dict[str, np.ndarray],
    fit_rows: np.ndarray,
    pairs: np.ndarray,
    tok_cfg: TokenizerConfig,
    disambiguation_size: int,
) -> tuple[SidLookup, tuple[int, ...], dict[str, Any]]:
    """Train SID-v2 on the rows `fit_rows` (pairs index into those rows), encode every item
    (`ids` in arrival order) with the frozen model, assign SIDs; returns the lookup, the
    level sizes and a report (uniqueness, first-code alignment of the pairs, seconds)."""
    started = time.monotonic()
    fit = {k: v[fit_rows] for k, v in embeddings.items()}
    tok = train_tokenizer(fit, pairs, tok_cfg)
    codes = np.asarray(tok.encode(embeddings))  # [items, L]
    sids, overflow = assign_sids(ids, codes, disambiguation_size)
    fit_codes = codes[fit_rows]
    rng = np.random.default_rng(0)
    report = {
        "items": len(ids),
        "fit_items": int(len(fit_rows)),
        "level_sizes": list(tok.level_sizes),
        "uniqueness_before_disambiguation": sid_uniqueness(codes),
        "max_disambiguation_code": max((s[-1] for s in sids.values()), default=0),
        "no_sid_overflow": overflow,
        "first_code_alignment": first_code_alignment(fit_codes, pairs, rng, levels=1),
        "first_two_codes_alignment": first_code_alignment(fit_codes, pairs, rng, levels=2),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("SIDs: %s", report)
    return SidLookup(tok.sid_version, sids), tok.level_sizes, report


def pair_rows(pairs: Sequence[tuple[str, str]], row: dict[str, int]) -> np.ndarray:
    idx = sorted({(row[a], row[b]) for a, b in pairs if a in row and b in row and a != b})
    return np.asarray(idx, np.int32).reshape(-1, 2)


# ---------------------------------------------------------------------------- training


def sft_sequences(
    examples: Sequence[schema.SftExample], lookup: SidLookup, vocab: Vocab, max_prompt_len: int
) -> tuple[list[TrainingSequence], int]:
    seqs, skipped = [], 0
    for e in examples:
        try:
            seqs.append(sft_sequence(e, lookup, vocab, max_prompt_len))
        except UnknownTargetError:
            skipped += 1
    return seqs, skipped


def train_sft(
    params: Any,
    model_cfg,
    vocab: Vocab,
    seqs: Sequence[TrainingSequence],
    cfg: QualityConfig,
    passes: int,
    label: str,
) -> tuple[Any, dict[str, Any]]:
    """Continuous SFT: `passes` passes over `seqs` in their (time) order, constant LR after
    warm-up; the last batch of a pass is filled with zero-weight rows (one compiled shape)."""
    tx = make_optimizer(OptimizerConfig(cfg.sft_lr, cfg.sft_warmup))
    stepper = Stepper(model_cfg, tx)
    state = init_state(params, tx)
    bs = cfg.batch_size
    per_pass = math.ceil(len(seqs) / bs)
    total = per_pass * passes
    losses: list[float] = []
    step = 0
    started = last = time.monotonic()
    for _ in range(passes):
        for start in range(0, len(seqs), bs):
            rows = list(seqs[start : start + bs])
            rows += [TrainingSequence(rows[0].tokens, rows[0].loss_start, 0.0)] * (bs - len(rows))
            state, m = stepper.train(state, collate(rows, cfg.seq_len, vocab.pad_id))
            step += 1
            now = time.monotonic()
            if now - last >= cfg.log_every_s or step == total:
                loss = float(m.loss)
                losses.append(loss)
                rate = step / (now - started)
                log.info(
                    "sft %s step %d/%d loss %.4f | %.1f steps/s, %.0f examples/s | ETA %.0f s",
                    label,
                    step,
                    total,
                    loss,
                    rate,
                    rate * bs,
                    (total - step) / rate,
                )
                last = now
    seconds = time.monotonic() - started
    return state.params, {
        "steps": step,
        "examples_trained": len(seqs) * passes,
        "final_loss": losses[-1] if losses else None,
        "seconds": round(seconds, 1),
        "steps_per_s": round(step / seconds, 2) if seconds else None,
    }


def _spaced(examples: Sequence[schema.SftExample], n: int) -> list[schema.SftExample]:
    """At most n examples, evenly spaced over the (time-ordered) list: deterministic."""
    if len(examples) <= n:
        return list(examples)
    idx = np.linspace(0, len(examples) - 1, n).round().astype(int)
    return [examples[i] for i in idx]


def run_dataset(
    name: str,
    cfg: QualityConfig,
    uploads_before: Sequence[schema.UploadEvent],
    watches_before: Sequence[schema.WatchEvent],
    lookup: SidLookup,
    level_sizes: Sequence[int],
    train: Sequence[schema.SftExample],
    scored: Sequence[schema.SftExample],
    sft_passes: int,
    references: Callable[[frozenset[str]], dict[str, Any]] | None = None,
    sft_max_examples: int = 0,
) -> dict[str, Any]:
    """CPT, SFT from CPT, SFT from random init, baselines (and `references(candidates)`,
    rankers reported but never counted as baselines); all evaluated on `scored`."""
    timings: dict[str, float] = {}
    t = time.monotonic()
    vocab_cfg = VocabConfig(
        text_vocab_size=cfg.text_vocab_size, disambiguation_size=cfg.disambiguation_size
    )
    vocab = vocab_for_corpus(uploads_before, vocab_cfg, level_sizes)
    model_cfg = dataclasses.replace(
        model_preset(cfg.preset), max_len=max(cfg.seq_len, model_preset(cfg.preset).max_len)
    ).with_vocab(vocab.size)
    corpus = build_corpus(uploads_before, watches_before, lookup, vocab, cfg.seq_len)
    cpt_cfg = CptConfig(
        steps=cfg.cpt_steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        learning_rate=cfg.cpt_lr,
        warmup_steps=min(100, cfg.cpt_steps // 10),
        seed=cfg.seed,
        log_every_s=cfg.log_every_s,
    )
    with tempfile.TemporaryDirectory(prefix="plum-bench-cpt-") as tmp:
        cpt = train_cpt(cpt_cfg, model_cfg, vocab, corpus, tmp)
        cpt_params = load_model(tmp).params
    timings["cpt_s"] = round(time.monotonic() - t, 1)

    # the model's SFT may see only `sft_max_examples` (0 = all), evenly spaced in time so
    # every period and user is represented; the baselines always get the whole training
    # slice, so a cut handicaps the model, never them
    sft_train = _spaced(train, sft_max_examples) if sft_max_examples else list(train)
    seqs, skipped_train = sft_sequences(sft_train, lookup, vocab, cfg.max_prompt_len)
    log.info(
        "%s: %d SFT sequences (%d skipped, target without SID)", name, len(seqs), skipped_train
    )
    trained: dict[str, Any] = {}
    sft_info: dict[str, Any] = {}
    for label, start in (
        ("sft_from_cpt", cpt_params),
        ("sft_from_random", init_params(model_cfg, jax.random.PRNGKey(cfg.seed + 1))),
    ):
        trained[label], sft_info[label] = train_sft(
            start, model_cfg, vocab, seqs, cfg, sft_passes, f"{name}/{label}"
        )
        timings[f"{label}_s"] = sft_info[label]["seconds"]

    t = time.monotonic()
    cands = candidate_ids(lookup, vocab)
    rankers: dict[str, Any] = dict(fit_baselines(train, cands))
    if references is not None:
        rankers.update(references(cands))
    for label, params in trained.items():
        rankers[label] = ModelRanker(
            model_cfg,
            params,
            vocab,
            lookup,
            beams=cfg.beams,
            max_prompt_len=cfg.max_prompt_len,
            batch_size=cfg.eval_batch,
        )
    scored = _spaced(scored, cfg.eval_max)
    report = evaluate(rankers, scored, candidates=cands)
    unconstrained = ModelRanker(
        model_cfg,
        trained["sft_from_cpt"],
        vocab,
        lookup,
        beams=cfg.beams,
        max_prompt_len=cfg.max_prompt_len,
        batch_size=cfg.eval_batch,
        constrained=False,
    )
    hall_examples = [e for e in scored if e.target_video_id in cands][: cfg.hallucination_max]
    gen = unconstrained.generate(hall_examples)
    timings["eval_s"] = round(time.monotonic() - t, 1)
    report["hallucination"] = {
        "ranker": "sft_from_cpt, unconstrained beam search",
        "examples": len(hall_examples),
        "generated_sids": gen.generated,
        "invalid_sids": gen.invalid,
        "rate": gen.hallucination_rate,
    }
    best = max(BASELINES, key=lambda b: report["rankers"][b]["recall@10"])
    best_r10 = report["rankers"][best]["recall@10"]
    report["ratio"] = {
        "best_baseline": best,
        **{
            f"{m}_recall@10_vs_best_baseline": (
                round(report["rankers"][m]["recall@10"] / best_r10, 3) if best_r10 else None
            )
            for m in MODELS
        },
    }
    report["sizes"] = {
        "train_examples": len(train),
        "sft_examples_used": len(sft_train),
        "train_sequences": len(seqs),
        "train_skipped_no_sid": skipped_train,
        "scored_examples": len(scored),
        "candidates": len(cands),
        "vocab_size": vocab.size,
        "model": model_cfg.to_dict(),
        "cpt_corpus": corpus.describe(),
    }
    report["cpt"] = {"first_loss": cpt.first_loss, "final_loss": cpt.final_loss, "steps": cpt.step}
    report["sft"] = sft_info
    report["timings"] = timings
    return report


# ---------------------------------------------------------------------------- datasets


def run_simulator(cfg: QualityConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    data = simulate(cfg)
    sim_s = time.monotonic() - t0
    train, fresh = fresh_split(data.examples, cfg.holdout)
    if cfg.eval_on == "validation":
        train, scored = fresh_split(train, cfg.holdout)
    else:
        scored = fresh
    cut_ts = scored[0].ts
    uploads_before = [u for u in data.uploads if u.ts < cut_ts]
    watches_before = [w for w in data.watches if w.ts < cut_ts]
    # SIDs: trained on content known before the cut, the frozen model then names every
    # upload as it arrives (new videos of the scored window get SIDs too)
    latest: dict[str, schema.UploadEvent] = {}
    for u in data.uploads:
        latest.setdefault(u.video_id, u)
    ids = sorted(latest, key=lambda v: (latest[v].ts, v))
    names = sorted(latest[ids[0]].embeddings)
    emb = {n: np.asarray([latest[v].embeddings[n] for v in ids], np.float32) for n in names}
    fit_rows = np.asarray([i for i, v in enumerate(ids) if latest[v].ts < cut_ts])
    row = {ids[i]: j for j, i in enumerate(fit_rows)}
    pairs = pair_rows([(a, b) for a, b, ts in data.pairs if ts < cut_ts], row)
    lookup, level_sizes, sid_report = train_sids(
        ids,
        emb,
        fit_rows,
        pairs,
        cfg.tokenizer_config(cfg.tokenizer_steps),
        cfg.disambiguation_size,
    )
    report = run_dataset(
        "simulator",
        cfg,
        uploads_before,
        watches_before,
        lookup,
        level_sizes,
        train,
        scored,
        cfg.sft_passes,
        references=lambda cands: {"oracle_ground_truth": OracleRanker(data.truth, list(cands))},
    )
    report["sids"] = sid_report
    report["split"] = {
        "kind": f"fresh_split({cfg.holdout})"
        + (" of the training slice (validation)" if cfg.eval_on == "validation" else ""),
        "cut_ts": cut_ts,
        "examples": len(data.examples),
        "train": len(train),
        "scored": len(scored),
    }
    report["data"] = {
        "uploads": len(data.uploads),
        "watches": len(data.watches),
        "clicked_watches": sum(w.clicked for w in data.watches),
        "sft_examples": len(data.examples),
        "cpt_watches": len(watches_before),
        "cpt_uploads": len(uploads_before),
        "users": len({w.user_id for w in data.watches}),
    }
    report["timings"]["simulate_s"] = round(sim_s, 1)
    report["timings"]["sids_s"] = sid_report["seconds"]
    report["timings"]["total_s"] = round(time.monotonic() - t0, 1)
    return report


def run_movielens(cfg: QualityConfig, directory: Path) -> dict[str, Any]:
    from streams.datasets import movielens as ml
    from trainer.movielens_examples import load_movielens_examples

    t0 = time.monotonic()
    ml_cfg = ml.MovieLensConfig()
    data = ml.load(directory)
    examples = load_movielens_examples(directory, ml_cfg, history_len=cfg.history_len)
    train, valid, test = leave_last_out(examples)
    scored = valid if cfg.eval_on == "validation" else test
    held = {e.event_id for e in valid} | {e.event_id for e in test}
    ratings = sorted(data.ratings, key=ml.rating_order_key)
    watches = [w for w in ml.watch_events(ratings, ml_cfg) if w.event_id not in held]
    emb = ml.content_embeddings(data.movies, ml_cfg)
    upload_ts = ml.upload_times_ms(data.ratings, data.item_ids)
    uploads = ml.upload_events(data.movies, upload_ts, emb, ml_cfg)
    order = sorted(range(len(uploads)), key=lambda i: (uploads[i].ts, uploads[i].video_id))
    ids = [uploads[i].video_id for i in order]
    emb = {k: v[order] for k, v in emb.items()}
    row = {v: i for i, v in enumerate(ids)}
    # contrastive pairs: consecutive well-rated films in the training examples only
    pairs = pair_rows(
        [
            (e.context_video_id, e.target_video_id)
            for e in train
            if e.context_video_id is not None and e.reward >= 0.8
        ],
        row,
    )
    lookup, level_sizes, sid_report = train_sids(
        ids,
        emb,
        np.arange(len(ids)),
        pairs,
        cfg.tokenizer_config(cfg.ml_tokenizer_steps, cfg.ml_codebook_base),
        cfg.disambiguation_size,
    )
    report = run_dataset(
        "movielens",
        cfg,
        uploads,
        watches,
        lookup,
        level_sizes,
        train,
        scored,
        cfg.ml_sft_passes,
        sft_max_examples=cfg.ml_sft_max_examples,
    )
    report["sids"] = sid_report
    report["split"] = {
        "kind": "leave_last_out (RecBole): scored on "
        + ("validation" if cfg.eval_on == "validation" else "test"),
        "examples": len(examples),
        "train": len(train),
        "validation": len(valid),
        "test": len(test),
    }
    report["data"] = {
        "ratings": len(data.ratings),
        "movies": len(data.movies),
        "cpt_watches": len(watches),
    }
    report["timings"]["sids_s"] = sid_report["seconds"]
    report["timings"]["total_s"] = round(time.monotonic() - t0, 1)
    return report


# ---------------------------------------------------------------------------- result


def summarise(datasets: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(metrics, baseline, ratio) in the bench JSON layout."""
    metrics: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratio: dict[str, Any] = {}
    for name, rep in datasets.items():
        rankers = rep["rankers"]
        metrics[name] = {
            **{m: rankers[m] for m in MODELS},
            "hallucination_rate": rep["hallucination"]["rate"],
            "reference": {
                r: e for r, e in rankers.items() if r not in MODELS and r not in BASELINES
            },
            "num_examples": rep["num_examples"],
            "num_skipped_no_sid": rep["num_skipped_no_sid"],
            "detail": {k: v for k, v in rep.items() if k not in ("rankers", "ratio")},
        }
        baseline[name] = {b: rankers[b] for b in BASELINES}
        ratio[name] = rep["ratio"]
    return metrics, baseline, ratio


def run(
    cfg: QualityConfig,
    movielens: Path | None = None,
    out_dir: Path | None = None,
    name: str = NAME,
    simulator: bool = True,
) -> tuple[dict[str, Any], Path]:
    started = time.monotonic()
    datasets: dict[str, dict[str, Any]] = {}
    if simulator:
        datasets["simulator"] = run_simulator(cfg)
    if movielens is not None:
        datasets["movielens"] = run_movielens(cfg, movielens)
    metrics, baseline, ratio = summarise(datasets)
    config = {**dataclasses.asdict(cfg), "movielens": str(movielens) if movielens else None}
    config["wall_s"] = round(time.monotonic() - started, 1)
    path = write_result(name, config, metrics, baseline, ratio, notes=NOTES, out_dir=out_dir)
    return {"metrics": metrics, "baseline": baseline, "ratio": ratio, "config": config}, path


def _table(doc: dict[str, Any]) -> str:
    lines = []
    for ds, m in doc["metrics"].items():
        rows = {**{k: m[k] for k in MODELS}, **doc["baseline"][ds], **m["reference"]}
        lines.append(f"{ds} ({m['num_examples']} examples)")
        for r, e in rows.items():
            lines.append(
                f"  {r:16s} R@1 {e['recall@1']:.4f} R@5 {e['recall@5']:.4f} "
                f"R@10 {e['recall@10']:.4f} NDCG@10 {e['ndcg@10']:.4f}"
            )
        lines.append(f"  hallucination (unconstrained) {m['hallucination_rate']:.4f}")
    return "\n".join(lines)


def _add_flags(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], QualityConfig]:
    """One --flag per QualityConfig field (dashes for underscores), default = the field's."""
    fields = dataclasses.fields(QualityConfig)
    for f in fields:
        default = f.default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"default {default}",
        )
    return lambda args: QualityConfig(**{f.name: getattr(args, f.name) for f in fields})


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum bench trainer-quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens-100k directory")
    parser.add_argument("--no-simulator", action="store_true", help="MovieLens only")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--name", default=NAME, help="result file name (bench/results/NAME.json)")
    make_cfg = _add_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    cfg = make_cfg(args)
    if args.movielens is not None:
        from streams.datasets.movielens import has_files

        if not has_files(args.movielens):
            parser.error(
                f"{args.movielens} holds no MovieLens-100k files; "
                f"fetch with /work/shared/data/fetch-movielens-100k {args.movielens}"
            )
    doc, path = run(cfg, args.movielens, args.out_dir, args.name, not args.no_simulator)
    print(_table(doc))
    print(json.dumps(doc["ratio"], indent=2))
    print(f"wrote {path}")
    return 0


__all__ = ["QualityConfig", "assign_sids", "cli", "run", "simulate", "summarise"]
