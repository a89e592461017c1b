"""`plum bench trainer-quality`: does the trained recommender beat the baselines?

One seeded, in-process run (no Kafka, no Flink: the library code they run or are held to):

1. simulator stream (streams.simulator) -> valid uploads and watches; watches -> the SFT
   examples and co-occurrence pairs the Flink job publishes, from the job's plain-Python
   reference (streams.flink.reference, compared exactly with the job in its tests);
2. split (trainer.eval.scoring_split): by event time, train = older, fresh = newest
   `holdout`;
3. SIDs (tokenizer.catalogue): SID-v2 trained on the content embeddings of the uploads
   before the cut (contrastive pairs from the windows before the cut), frozen, applied to
   every upload in arrival order, disambiguated by the SID index's own rule;
4. CPT (trainer.cpt) on metadata of the uploads and watches before the cut;
5. SFT (trainer.offline: the continuous trainer's step over the training examples in
   time order, constant LR after warm-up) from the CPT params, and the same SFT budget
   from random init (the paper's Table 5 ablation: CPT vs no CPT);
6. `evaluate` on the fresh slice: popularity, co-occurrence, sft_from_cpt,
   sft_from_random, all on the same examples and candidates; hallucination rate of an
   unconstrained beam search over the CPT+SFT model; on the simulator also a reference
   ranker that knows the hidden generative model (streams.simulator.oracle: roughly the
   best recall any ranker can get; not a baseline, never in the ratios);
7. MovieLens-100k (`--movielens DIR`): the same with streams.datasets.movielens (the
   uploads as published), trainer.movielens_examples and RecBole-style leave-last-out
   (train / validation / test; scored on test).

`--eval-on validation` scores on a validation slice carved from the training data
(simulator: the newest `holdout` of the training slice; MovieLens: the leave-last-out
validation example); the settings were chosen that way, never by looking at the
fresh/test slice.

Settings: `[bench_trainer_quality]` of --config (default configs/demo.toml; the section
is optional, its fields are `QualityConfig`'s), PLUM_BENCH_TRAINER_QUALITY__FIELD, then
the flags below and `--set FIELD=VALUE` (a TOML value) for any other field. The
simulator and the Flink job's logic take their other settings from the same file's
[simulator] and [flink].

    plum bench trainer-quality [--events N] [--preset tiny|small] [--cpt-steps N]
        [--sft-passes N] [--movielens /tmp/ml100k] [--eval-on fresh|validation]
        [--set ml_sft_max_examples=0]

Writes bench/results/trainer-quality.json: metrics per ranker per dataset, the config,
wall times, and ratio = model recall@10 / best baseline recall@10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench.common import bench_config, setting, write_result
from plum.config import REPO_ROOT, default_config_path, load_section
from streams.contracts import schema
from tokenizer.ablation import concatenate
from tokenizer.catalogue import name_catalogue
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.data import items_from_uploads, pair_rows
from trainer.config import VocabConfig, model_preset
from trainer.cpt import CptConfig, build_corpus, load_model, train_cpt, vocab_for_corpus
from trainer.eval import (
    SCORE_ON,
    ModelRanker,
    candidate_ids,
    evaluate,
    evenly_spaced,
    fit_baselines,
    scoring_split,
)
from trainer.model import init_params
from trainer.offline import SftConfig, sft_sequences, train_sft
from trainer.prompt import SidLookup

log = logging.getLogger(__name__)

NAME = "trainer-quality"
SECTION = "bench_trainer_quality"
BASELINES = ("popularity", "cooccurrence")
MODELS = ("sft_from_cpt", "sft_from_random")
NDCG_KS = (5, 10)
NOTES = (
    "Settings were chosen on validation slices carved from the training data "
    "(--eval-on validation: simulator = newest 10% of the training slice; MovieLens = the "
    "leave-last-out validation example), never on the fresh/test slice. Baselines are "
    "fitted on the whole training slice; the model's SFT on MovieLens sees an evenly "
    "spaced subset (ml_sft_max_examples) for the CPU budget, a handicap for the model "
    "only. oracle_ground_truth (simulator) ranks with the simulator's hidden generative "
    "model: a reference ceiling, not a baseline, never in the ratios."
)
NO_FUTURE = schema.ValidationLimits(now_ms=2**62)
TOKENIZER_SHAPE = REPO_ROOT / "configs" / "test.toml"  # a finished stream: nothing is "future"


@dataclass(frozen=True)
class QualityConfig:
    """[bench_trainer_quality]: the sizes of one run; everything else comes from the
    config file's own sections ([simulator], [flink], [movielens]) and, for the tokenizer's
    network sizes, configs/test.toml's [tokenizer]."""

    seed: int = 11
    # --- simulator ([simulator] overrides)
    events: int = 60_000  # records: initial uploads + watches + new uploads
    num_users: int = 2000
    num_topics: int = 16
    initial_videos: int = 600
    new_uploads_per_sim_minute: float = 2.0
    # --- the Flink job's per-user logic ([flink] overrides)
    history_len: int = 8
    session_gap_ms: int = 30 * 60_000
    pair_prev_k: int = 3
    pair_window_ms: int = 60_000  # co-occurrence windows; pairs of windows ending by the cut
    pair_min_count: int = 1  # every co-watch is a contrastive pair
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
        if self.eval_on not in SCORE_ON:
            raise ValueError(f"eval_on={self.eval_on!r} must be one of {SCORE_ON}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout={self.holdout} must be in (0, 1)")
        if self.sft_passes < 1 or self.ml_sft_passes < 1 or self.cpt_steps < 1:
            raise ValueError("sft passes and cpt_steps must be >= 1")

    @property
    def seq_len(self) -> int:
        return self.max_prompt_len + self.num_levels + 1  # prompt + the target's SID tokens


def load_quality_config(path: Path | str | None, env=None, **overrides: Any) -> QualityConfig:
    return load_section(QualityConfig, path, SECTION, env=env, **overrides)


def tokenizer_config(cfg: QualityConfig, steps: int, codebook_base: int) -> TokenizerConfig:
    """configs/test.toml's [tokenizer] (sized for ~1k items: unique SIDs, seconds on CPU)
    with this run's codebooks, steps and seed."""
    return load_tokenizer_config(
        TOKENIZER_SHAPE,
        env={},
        codebook_base=codebook_base,
        num_levels=cfg.num_levels,
        steps=steps,
        seed=cfg.seed,
        log_every=max(steps // 4, 1),
    )


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SimData:
    uploads: list[schema.UploadEvent]
    watches: list[schema.WatchEvent]
    examples: list[schema.SftExample]  # time order
    pairs: list[tuple[str, str, int]]  # (a, b, window end): what the job publishes
    truth: dict[str, Any]  # the simulator's ground truth


def simulate(cfg: QualityConfig, config_path: Path | str) -> SimData:
    """Simulator stream -> uploads, watches, and the Flink job's examples and pairs."""
    from streams.flink.job import load_flink_config
    from streams.flink.reference import RefParams, run_bounded
    from streams.simulator.config import load_config
    from streams.simulator.stream import VALID, Simulator

    sim = Simulator(
        load_config(
            config_path,
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
    )
    flink = load_flink_config(
        config_path,
        env={},
        history_len=cfg.history_len,
        session_gap_ms=cfg.session_gap_ms,
        pair_prev_k=cfg.pair_prev_k,
        window="tumbling",
        window_size_ms=cfg.pair_window_ms,
        min_count=cfg.pair_min_count,
    )
    uploads: list[schema.UploadEvent] = []
    watch_values: list[bytes] = []
    for rec in sim.records():
        if rec.kind != VALID:
            continue
        if rec.topic == sim.upload_topic:
            uploads.append(schema.decode_upload(rec.value, NO_FUTURE))
        else:
            watch_values.append(rec.value)
    watches = [schema.decode_watch(v, NO_FUTURE) for v in watch_values]
    out = run_bounded(watch_values, RefParams.from_flink_config(flink), NO_FUTURE.now_ms)
    pairs = [(a, b, end) for (a, b, _count, end) in sorted(out.pairs)]
    examples = out.examples_in_time_order()
    log.info(
        "simulated %d uploads, %d watches -> %d SFT examples, %d pairs",
        len(uploads),
        len(watches),
        len(examples),
        len(pairs),
    )
    return SimData(uploads, watches, examples, pairs, sim.ground_truth())


def name_items(
    uploads: Sequence[schema.UploadEvent],
    fit: Callable[[schema.UploadEvent], bool],
    pairs: Sequence[tuple[str, str]],
    tok_cfg: TokenizerConfig,
    disambiguation_size: int,
    concatenated: bool = False,
) -> tuple[SidLookup, tuple[int, ...], dict[str, Any]]:
    """SIDs trained on the uploads `fit` accepts, every upload named in arrival order; with
    `concatenated`, every modality is one input embedding (SID-v1's input,
    tokenizer.ablation.concatenate)."""
    started = time.monotonic()
    ordered = sorted(uploads, key=lambda u: (u.ts, u.video_id))
    ids, embeddings = items_from_uploads(ordered)
    if concatenated:
        embeddings = concatenate(embeddings)
    first = {}
    for u in ordered:
        first.setdefault(u.video_id, u)
    fit_rows = np.asarray([i for i, v in enumerate(ids) if fit(first[v])], np.int64)
    fit_pairs = pair_rows(pairs, [ids[i] for i in fit_rows])  # rows of the fit items
    named = name_catalogue(ids, embeddings, fit_rows, fit_pairs, tok_cfg, disambiguation_size)
    report = named.report(fit_rows, fit_pairs)
    report["inputs"] = {k: int(v.shape[1]) for k, v in sorted(embeddings.items())}
    report["seconds"] = round(time.monotonic() - started, 1)
    log.info("SIDs: %s", report)
    return SidLookup(named.version, named.sids), named.level_sizes, report


# ---------------------------------------------------------------------------- one dataset


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
    interactions: Sequence[str] | None = None,
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
    sft_train = evenly_spaced(train, sft_max_examples) if sft_max_examples else list(train)
    seqs, skipped_train = sft_sequences(sft_train, lookup, vocab, cfg.max_prompt_len)
    log.info(
        "%s: %d SFT sequences (%d skipped, target without SID)", name, len(seqs), skipped_train
    )
    sft_cfg = SftConfig(
        passes=sft_passes,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        max_prompt_len=cfg.max_prompt_len,
        learning_rate=cfg.sft_lr,
        warmup_steps=cfg.sft_warmup,
        log_every_s=cfg.log_every_s,
    )
    trained: dict[str, Any] = {}
    sft_info: dict[str, Any] = {}
    for label, start in (
        ("sft_from_cpt", cpt_params),
        ("sft_from_random", init_params(model_cfg, jax.random.PRNGKey(cfg.seed + 1))),
    ):
        t = time.monotonic()
        trained[label], result = train_sft(
            start, model_cfg, vocab, seqs, sft_cfg, f"{name}/{label}"
        )
        seconds = time.monotonic() - t
        sft_info[label] = {
            **dataclasses.asdict(result),
            "seconds": round(seconds, 1),
            "steps_per_s": round(result.steps / seconds, 2) if seconds else None,
        }
        timings[f"{label}_s"] = sft_info[label]["seconds"]

    t = time.monotonic()
    cands = candidate_ids(lookup, vocab)
    rankers: dict[str, Any] = dict(fit_baselines(train, cands, interactions=interactions))
    if references is not None:
        rankers.update(references(cands))

    def model_ranker(params: Any, constrained: bool = True) -> ModelRanker:
        return ModelRanker(
            model_cfg,
            params,
            vocab,
            lookup,
            beams=cfg.beams,
            max_prompt_len=cfg.max_prompt_len,
            batch_size=cfg.eval_batch,
            constrained=constrained,
        )

    for label, params in trained.items():
        rankers[label] = model_ranker(params)
    scored = evenly_spaced(scored, cfg.eval_max)
    report = evaluate(rankers, scored, candidates=cands, ndcg_ks=NDCG_KS)
    hall_examples = [e for e in scored if e.target_video_id in cands][: cfg.hallucination_max]
    gen = model_ranker(trained["sft_from_cpt"], constrained=False).generate(hall_examples)
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


def run_simulator(cfg: QualityConfig, config_path: Path | str) -> dict[str, Any]:
    from streams.simulator.oracle import OracleRanker

    t0 = time.monotonic()
    data = simulate(cfg, config_path)
    sim_s = time.monotonic() - t0
    train, scored = scoring_split(data.examples, "fresh_split", cfg.eval_on, cfg.holdout)
    cut_ts = scored[0].ts
    uploads_before = [u for u in data.uploads if u.ts < cut_ts]
    watches_before = [w for w in data.watches if w.ts < cut_ts]
    # SIDs: trained on content known before the cut, the frozen model then names every
    # upload as it arrives (new videos of the scored window get SIDs too)
    lookup, level_sizes, sid_report = name_items(
        data.uploads,
        lambda u: u.ts < cut_ts,
        [(a, b) for a, b, end in data.pairs if end <= cut_ts],
        tokenizer_config(cfg, cfg.tokenizer_steps, cfg.codebook_base),
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
        "pairs": len(data.pairs),
        "cpt_watches": len(watches_before),
        "cpt_uploads": len(uploads_before),
        "users": len({w.user_id for w in data.watches}),
    }
    report["timings"]["simulate_s"] = round(sim_s, 1)
    report["timings"]["sids_s"] = sid_report["seconds"]
    report["timings"]["total_s"] = round(time.monotonic() - t0, 1)
    return report


@dataclass(frozen=True)
class MovieLensInputs:
    """Everything a MovieLens run trains and scores on, built from the standard split
    (trainer.movielens_examples.leave_last_out_split): the tokenizer's pairs, the CPT
    watches, the SFT examples (`split.train`) and the baselines' interactions all come
    from training interactions only; tests/unit/test_movielens_leakage.py holds every
    one of them to that, by identity."""

    split: Any  # trainer.movielens_examples.LeaveLastOut
    scored: list[schema.SftExample]
    uploads: list[schema.UploadEvent]  # the catalogue as published: content, no ratings
    cpt_watches: list[schema.WatchEvent]  # training ratings as watches
    tokenizer_pairs: list[tuple[str, str, str]]  # (user, a, b) from training examples
    interactions: list[str]  # video of every training rating (popularity)


def movielens_inputs(
    directory: Path,
    config_path: Path | str,
    history_len: int,
    eval_on: str = "fresh",
    drop_newest: int = 0,
) -> MovieLensInputs:
    """The standard split of the ratings; `drop_newest` > 0 (a diagnostic) splits the
    ratings less each user's newest `drop_newest` instead, which are then used nowhere."""
    from streams.datasets import movielens as ml
    from trainer.movielens_examples import leave_last_out_split, training_pairs, without_newest

    ml_cfg = ml.load_movielens_config(config_path)
    data = ml.load(directory)
    ratings = without_newest(data.ratings, drop_newest)
    split = leave_last_out_split(ratings, ml_cfg, history_len=history_len)
    return MovieLensInputs(
        split=split,
        scored=split.scored(eval_on),
        uploads=ml.catalogue(data, ml_cfg),
        cpt_watches=list(ml.watch_events(split.train_ratings, ml_cfg)),
        # contrastive pairs: consecutive well-rated films in the training examples only
        tokenizer_pairs=training_pairs(split.train),
        interactions=[ml.video_id(r.item_id, ml_cfg) for r in split.train_ratings],
    )


def run_movielens(cfg: QualityConfig, directory: Path, config_path: Path | str) -> dict[str, Any]:
    t0 = time.monotonic()
    inputs = movielens_inputs(directory, config_path, cfg.history_len, cfg.eval_on)
    train, scored, uploads = inputs.split.train, inputs.scored, inputs.uploads
    examples = inputs.split.examples
    lookup, level_sizes, sid_report = name_items(
        uploads,
        lambda _: True,
        [(a, b) for _, a, b in inputs.tokenizer_pairs],
        tokenizer_config(cfg, cfg.ml_tokenizer_steps, cfg.ml_codebook_base),
        cfg.disambiguation_size,
    )
    report = run_dataset(
        "movielens",
        cfg,
        uploads,
        inputs.cpt_watches,
        lookup,
        level_sizes,
        train,
        scored,
        cfg.ml_sft_passes,
        sft_max_examples=cfg.ml_sft_max_examples,
        interactions=inputs.interactions,
    )
    report["sids"] = sid_report
    report["split"] = {
        "kind": "leave_last_out (RecBole): scored on "
        + ("validation" if cfg.eval_on == "validation" else "test"),
        "examples": len(examples),
        "train": len(train),
        "held_out": len(inputs.split.held),
        "scored": len(scored),
        "popularity": "all training interactions, ties to the smaller item id",
    }
    report["data"] = {
        "ratings": len(inputs.split.train_ratings) + len(inputs.split.held),
        "movies": len(uploads),
        "cpt_watches": len(inputs.cpt_watches),
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
    config_path: Path | str | None = None,
) -> tuple[dict[str, Any], Path]:
    started = time.monotonic()
    config_path = config_path or default_config_path()
    datasets: dict[str, dict[str, Any]] = {}
    if simulator:
        datasets["simulator"] = run_simulator(cfg, config_path)
    if movielens is not None:
        datasets["movielens"] = run_movielens(cfg, movielens, config_path)
    metrics, baseline, ratio = summarise(datasets)
    config = {
        **dataclasses.asdict(cfg),
        "config_file": str(config_path),
        "movielens": str(movielens) if movielens else None,
    }
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


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum bench trainer-quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML (default demo.toml)")
    parser.add_argument("--events", type=int)
    parser.add_argument("--preset", choices=("tiny", "small"))
    parser.add_argument("--cpt-steps", type=int)
    parser.add_argument("--sft-passes", type=int)
    parser.add_argument("--eval-on", choices=SCORE_ON)
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="F=V")
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens-100k directory")
    parser.add_argument("--no-simulator", action="store_true", help="MovieLens only")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--name", default=NAME, help="result file name (bench/results/NAME.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax: a line per save/restore
    overrides = {
        "events": args.events,
        "preset": args.preset,
        "cpt_steps": args.cpt_steps,
        "sft_passes": args.sft_passes,
        "eval_on": args.eval_on,
        **dict(args.set),
    }
    cfg = bench_config(parser, QualityConfig, SECTION, args.config, overrides)
    if args.movielens is not None:
        from streams.datasets.movielens import has_files

        if not has_files(args.movielens):
            parser.error(
                f"{args.movielens} holds no MovieLens-100k files; "
                f"fetch with /work/shared/data/fetch-movielens-100k {args.movielens}"
            )
    doc, path = run(
        cfg, args.movielens, args.out_dir, args.name, not args.no_simulator, args.config
    )
    print(_table(doc))
    print(json.dumps(doc["ratio"], indent=2))
    print(f"wrote {path}")
    return 0


__all__ = ["QualityConfig", "cli", "load_quality_config", "run", "simulate", "summarise"]
