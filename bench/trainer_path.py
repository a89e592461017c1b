"""`plum bench trainer-path`: `plum trainer run` fed the MovieLens replay through Kafka and
the Flink job, against the in-process quality bench, at the same number of steps.

Issue 14 asks that the bench measure the production path. This runs both, from the same
SIDs, vocabulary, model and initial parameters (bench.quality's seed: `seed_model`,
`initial_params`), on a private broker (free ports) and private directories:

1. The standard split's training ratings (each user's last two held out), written to the
   replay topics by `plum data import movielens`'s writer (`write_timeline`).
2. `plum flink run --backfill` over them, a real PyFlink job: the SFT examples topic.
   Reward weights are click-only, so every rating is kept with weight 1, as the bench
   trains every example; `history_len` is the bench's.
3. A check that both arms train the same rows: each of the bench's training examples
   against the job's example of the same event id, as both arms write it
   (`bench.quality.example_row`). A difference stops the bench. The job also writes an
   example for each user's first rating (empty history), which the split does not
   train: counted, and trained by the trainer run as production trains them.
4. The bench's SIDs in a SID index, the initial parameters as a step-0 CPT checkpoint
   (`trainer.cpt.save_cpt_checkpoint`), and `plum trainer run --max-steps N` as a
   subprocess: `prompt_layout = "sequence"`, `train_positions = "every"` (or "target"
   with `--set train_targets=one`), fresh fraction 1 (every row from Kafka, read once as
   the consumer fetches it), the bench's optimizer and averaging.
5. The bench: the same N steps in-process on the same rows (`train_targets =
   "examples"`), shuffled, epoch after epoch. A diagnostic arm trains them in timeline
   order (event time, not shuffled), as a stream delivers them.
6. Every arm scored by the bench's ranker (constrained beam of `beams`) on test and
   validation: Recall@1/5/10, NDCG@5/10, and the paired difference of the trainer run's
   hits and each other arm's.

    plum bench trainer-path [--steps N] [--data-dir DIR] [--set F=V] [--out-dir DIR]

`--steps` defaults to one pass over the training examples, so the trainer reads the
whole topic once. Settings: `[quality]` as `plum bench quality` reads them. Writes
bench/results/quality-ml100k-trainer-path.json.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import bench_broker, bench_config, write_result, write_sid_index
from bench.quality import (
    KS,
    NDCG_KS,
    SECTION,
    Fixed,
    QualityConfig,
    SeedModel,
    copy_tree,
    example_batches,
    example_row,
    hits,
    initial_params,
    log_progress,
    paired_difference,
    quality_parser,
    rng_for,
    seed_model,
)
from bench.trainer_quality import movielens_inputs
from plum.config import REPO_ROOT, default_config_path
from plum.ports import free_port
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.datasets import movielens as ml
from streams.datasets.cli import write_timeline
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import read_all
from trainer.cpt import save_cpt_checkpoint
from trainer.eval import evaluate
from trainer.offline import fit
from trainer.step import Stepper, evaluated_params, init_state, make_optimizer

log = logging.getLogger(__name__)

NAME = "quality-ml100k-trainer-path"
RUN_CONFIG = REPO_ROOT / "configs" / "test.toml"  # the rest of each process's settings
AGREEMENT = 0.01  # the tolerance on test Recall@10
# QualityConfig.train_targets -> the trainer's [trainer_data] train_positions writing the
# same rows (bench.quality.example_row); the bench's windows ("every") have no trainer twin
TRAIN_POSITIONS = {"examples": "every", "one": "target"}
BACKFILL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class RowCheck:
    """How the Flink job's examples compare with the bench's, as training rows."""

    identical: int
    different: int
    flink_only: int  # examples the split does not train (each user's first rating)
    bench_only: int

    @property
    def same_rows(self) -> bool:
        return self.different == 0 and self.bench_only == 0


def compare_rows(
    flink: Sequence[schema.SftExample], bench: Sequence[schema.SftExample], m: SeedModel
) -> RowCheck:
    """Each bench example against the job's example of the same event id, as the rows
    both arms train (bench.quality.example_row: tokens and loss mask)."""
    by_id = {e.event_id: e for e in flink}
    identical = different = missing = 0
    for b in bench:
        f = by_id.get(b.event_id)
        if f is None:
            missing += 1
            continue
        row_f = example_row(f, m.lookup, m.vocab, m.cfg, m.max_prompt_len)
        row_b = example_row(b, m.lookup, m.vocab, m.cfg, m.max_prompt_len)
        same = row_f.tokens == row_b.tokens and row_f.loss_mask == row_b.loss_mask
        identical, different = identical + same, different + (not same)
    bench_ids = {b.event_id for b in bench}
    extra = sum(1 for e in flink if e.event_id not in bench_ids)
    return RowCheck(identical, different, extra, missing)


def _replay_training_ratings(
    directory: Path,
    config_path: Path | str,
    ratings: Sequence[ml.Rating],
    bootstrap: str,
    prefix: str,
) -> tuple[TopicNames, int, int]:
    """Every topic under `prefix`, and the films and the training ratings in its replay
    topics; returns the names, the number of watches and the newest watch's ts (ms)."""
    ensure_topics(bootstrap, topic_set(prefix))
    names = TopicNames.with_prefix(prefix)
    data = ml.load(directory)
    training = dataclasses.replace(data, ratings=tuple(ratings))
    records = ml.timeline(training, ml.load_movielens_config(config_path))
    counts = write_timeline(records, bootstrap, names)
    newest = max(r.ts for r in records if r.kind == ml.KIND_WATCH)
    return names, counts.watches, newest


def _plum(words: Sequence[str], bootstrap: str, prefix: str) -> list[str]:
    """`plum WORDS` on RUN_CONFIG, the private broker and the run's topic prefix."""
    return [
        *(sys.executable, "-m", "plum.cli", *words),
        *("--config", str(RUN_CONFIG), "--bootstrap", bootstrap, "--topic-prefix", prefix),
    ]


def _flink_backfill(
    bootstrap: str, prefix: str, until_ms: int, cfg: QualityConfig, work: Path
) -> float:
    """`plum flink run --backfill` over the replay topic; returns its wall seconds."""
    env = dict(
        os.environ,
        PLUM_STATE_DIR=str(work / "state"),
        PLUM_FLINK__REST_PORT=str(free_port()),
        PLUM_FLINK__CHECKPOINT_INTERVAL_MS="5000",
        PLUM_FLINK__HISTORY_LEN=str(cfg.history_len),
        # r = click only: every rating is kept (p = r / r_max = 1) with weight 1
        PLUM_FLINK__W_RATIO="0",
        PLUM_FLINK__W_SATISFACTION="0",
        FLINK_LOG_DIR=str(work / "flink-log"),
    )
    cmd = [
        *_plum(("flink", "run"), bootstrap, prefix),
        "--backfill",
        "--from",
        "0",
        "--to",
        str(until_ms + 1),
        "--checkpoint-dir",
        str(work / "flink-checkpoints"),
    ]
    t = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, timeout=BACKFILL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the Flink backfill failed (exit {done.returncode})")
    return time.monotonic() - t


def _trainer_run(
    bootstrap: str, prefix: str, steps: int, cfg: QualityConfig, m: SeedModel, work: Path
) -> tuple[Path, float]:
    """`plum trainer run --max-steps steps` from the CPT checkpoint in work/cpt; returns
    its run directory and wall seconds."""
    env = dict(
        os.environ,
        PLUM_STATE_DIR=str(work / "state"),
        # the bench's optimizer: [trainer] has the same fields
        **{f"PLUM_TRAINER__{k.upper()}": str(v) for k, v in asdict(cfg.optimizer()).items()},
        PLUM_TRAINER__SEED=str(cfg.seed),
        PLUM_TRAINER__CHECKPOINT_EVERY_STEPS=str(steps),
        PLUM_TRAINER__CHECKPOINT_EVERY_S="1000000",
        PLUM_TRAINER__LOG_EVERY_S=str(cfg.log_every_s),
        PLUM_TRAINER_DATA__BATCH_SIZE=str(cfg.batch_size),
        PLUM_TRAINER_DATA__SEQ_LEN=str(m.seq_len),
        PLUM_TRAINER_DATA__MAX_PROMPT_LEN=str(m.max_prompt_len),
        PLUM_TRAINER_DATA__FRESH_FRACTION="1.0",
        PLUM_TRAINER_DATA__WHEN_IDLE="wait",
        PLUM_TRAINER_DATA__FRESH_WAIT_MS="1000",
        PLUM_TRAINER_DATA__PREFETCH_BATCHES="8",
        PLUM_TRAINER_DATA__REWARD_MODE="sampled",
        PLUM_TRAINER_DATA__PROMPT_LAYOUT="sequence",
        PLUM_TRAINER_DATA__TRAIN_POSITIONS=TRAIN_POSITIONS[cfg.train_targets],
        PLUM_TRAINER_DATA__SID_REFRESH_S="3600",
        # the model comes from the CPT checkpoint; [trainer_model] says the same, for the
        # config checks that hold the data's lengths to it
        **{
            f"PLUM_TRAINER_MODEL__{k.upper()}": str(getattr(m.model_cfg, k))
            for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len", "dropout")
        },
    )
    run_dir = work / "run"
    cmd = [
        *_plum(("trainer", "run"), bootstrap, prefix),
        "--index",
        str(work / "sid-index.sqlite"),
        "--cpt",
        str(work / "cpt"),
        "--run-dir",
        str(run_dir),
        "--max-steps",
        str(steps),
        "--metrics-port",
        "-1",
    ]
    t = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"plum trainer run failed (exit {done.returncode})")
    return run_dir, time.monotonic() - t


def _bench_arm(
    cfg: QualityConfig,
    m: SeedModel,
    train: Sequence[schema.SftExample],
    params0: Any,
    steps: int,
    shuffled: bool,
) -> tuple[Any, dict[str, Any]]:
    """The quality bench's training: `steps` steps of its example rows from `params0`,
    epoch after epoch, each shuffled (the bench) or in the examples' timeline order (a
    stream read in event time, as a diagnostic); returns the evaluated (averaged)
    parameters and a report."""
    tx = make_optimizer(cfg.optimizer())
    rng = rng_for(cfg) if shuffled else None
    epochs = (example_batches(train, m, rng) for _ in itertools.count())
    batches = itertools.islice(itertools.chain.from_iterable(epochs), steps)
    t = time.monotonic()
    state, result = fit(
        Stepper(m.model_cfg, tx),
        init_state(copy_tree(params0), tx),  # the step donates its state
        batches,
        steps,
        f"trainer-path/bench ({'shuffled' if shuffled else 'timeline order'})",
        cfg.log_every_s,
    )
    return evaluated_params(state), {
        "steps": result.steps,
        "seconds": round(time.monotonic() - t, 1),
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "order": "the training examples shuffled, epoch after epoch"
        if shuffled
        else "the training examples in timeline order (event time), not shuffled",
    }


def score(
    m: SeedModel, params: dict[str, Any], examples: Sequence[schema.SftExample]
) -> dict[str, Any]:
    """Every arm's metrics on `examples`, and the paired Recall@10 difference of the
    trainer run against each other arm."""
    generations = {
        name: m.ranker(m.cfg.beams, True, p).generate(examples) for name, p in params.items()
    }
    report = evaluate(
        {name: Fixed(g) for name, g in generations.items()},
        examples,
        KS,
        candidates=m.candidates,
        ndcg_ks=NDCG_KS,
    )
    targets = [e.target_video_id for e in examples]
    trainer_hits = hits(generations["trainer_run"].ranked, targets)
    paired = {
        f"trainer_run_minus_{name}": paired_difference(trainer_hits, hits(g.ranked, targets))
        for name, g in generations.items()
        if name != "trainer_run"
    }
    return {"rankers": report["rankers"], "paired": paired}


def run(
    cfg: QualityConfig,
    directory: Path,
    steps: int = 0,
    out_dir: Path | None = None,
    config_path: Path | str | None = None,
) -> tuple[dict[str, Any], Path]:
    from publisher.export import checkpoint_steps, read_checkpoint

    if cfg.train_targets not in TRAIN_POSITIONS:
        raise ValueError(
            f"train_targets={cfg.train_targets!r}: the trainer trains {sorted(TRAIN_POSITIONS)}"
        )
    started = time.monotonic()
    config_path = config_path or default_config_path()
    inputs = movielens_inputs(directory, config_path, cfg.history_len)
    m = seed_model(cfg, inputs)
    train = m.with_sid(inputs.split.train)
    steps = steps or math.ceil(len(train) / cfg.batch_size)
    params0, cpt = initial_params(cfg, inputs, m.lookup, m.vocab, m.model_cfg, m.seq_len)
    timings: dict[str, float] = {"sids_s": round(time.monotonic() - started, 1)}
    with (
        tempfile.TemporaryDirectory(prefix="plum-bench-trainer-path-") as tmp,
        bench_broker() as bootstrap,
    ):
        work = Path(tmp)
        t = time.monotonic()
        prefix = f"bench-trainer-path-{int(time.time())}."
        names, watches, newest = _replay_training_ratings(
            directory, config_path, inputs.split.train_ratings, bootstrap, prefix
        )
        timings["replay_import_s"] = round(time.monotonic() - t, 1)
        timings["flink_backfill_s"] = round(
            _flink_backfill(bootstrap, prefix, newest, cfg, work), 1
        )
        flink_examples = [
            schema.decode_sft_example(r.value)
            for r in read_all(bootstrap, names.sft_examples, timeout_s=300)
        ]
        rows = compare_rows(flink_examples, train, m)
        log.info("the job's examples against the bench's: %s", rows)
        if not rows.same_rows:
            raise RuntimeError(
                f"the Flink job's examples are not the bench's training rows: {rows}"
            )
        write_sid_index(work / "sid-index.sqlite", m.lookup.version, m.lookup.sids)
        save_cpt_checkpoint(
            work / "cpt",
            cpt["steps"] if cpt else 0,
            params0,
            m.vocab,
            {
                "kind": "cpt",
                "model_config": m.model_cfg.to_dict(),
                "sid_version": m.lookup.version,
                "source": "bench trainer-path: the quality bench's initial parameters",
            },
        )
        run_dir, trainer_s = _trainer_run(bootstrap, prefix, steps, cfg, m, work)
        timings["trainer_run_s"] = round(trainer_s, 1)
        saved = checkpoint_steps(run_dir)
        if not saved or saved[-1] != steps:
            raise RuntimeError(f"the trainer run saved steps {saved}, not {steps}")
        checkpoint = read_checkpoint(run_dir, steps)
        trainer_meta = {
            "steps": checkpoint.step,
            "seconds": round(trainer_s, 1),
            "counters": checkpoint.meta.get("counters"),
            "final_loss": checkpoint.loss,
            "order": "the SFT examples topic once, as the consumer fetches it (each partition "
            "in offset order; fresh_fraction 1)",
        }
    bench_params, bench_report = _bench_arm(cfg, m, train, params0, steps, shuffled=True)
    ordered_params, ordered_report = _bench_arm(cfg, m, train, params0, steps, shuffled=False)
    timings["bench_train_s"] = bench_report["seconds"]
    timings["bench_timeline_order_train_s"] = ordered_report["seconds"]
    params = {
        "trainer_run": checkpoint.params,
        "bench": bench_params,
        "bench_timeline_order": ordered_params,
    }
    t = time.monotonic()
    test = score(m, params, m.with_sid(inputs.split.test))
    validation = score(m, params, m.with_sid(inputs.split.validation))
    timings["eval_s"] = round(time.monotonic() - t, 1)
    scores = {"test": test, "validation": validation}

    def arm(name: str) -> dict[str, Any]:
        return {on: sc["rankers"][name] for on, sc in scores.items()}

    def recall(name: str, on: str) -> float:
        return scores[on]["rankers"][name]["recall@10"]

    diff = {on: round(recall("trainer_run", on) - recall("bench", on), 4) for on in scores}
    metrics = {
        "trainer_run": {**arm("trainer_run"), "training": trainer_meta},
        "recall@10_trainer_run_minus_bench": diff,
        f"test_recall@10_within_{AGREEMENT}": abs(diff["test"]) <= AGREEMENT,
        "paired": {on: sc["paired"] for on, sc in scores.items()},
        # a diagnostic arm: the bench's rows in timeline order, as a stream delivers them
        "bench_timeline_order": {**arm("bench_timeline_order"), "training": ordered_report},
        "rows": {**dataclasses.asdict(rows), "flink_examples": len(flink_examples)},
        "cpt": cpt,
    }
    baseline = {"bench": {**arm("bench"), "training": bench_report}}
    ratio = {
        "recall@10_trainer_run_over_bench": {
            on: round(recall("trainer_run", on) / max(recall("bench", on), 1e-9), 3)
            for on in scores
        }
    }
    config = {
        **dataclasses.asdict(cfg),
        "steps": steps,
        "training_examples": len(train),
        "replayed_watches": watches,
        "data_dir": str(directory),
        "config_file": str(config_path),
        "run_config": str(RUN_CONFIG),
        "timings": {**timings, "total_s": round(time.monotonic() - started, 1)},
    }
    path = write_result(
        NAME,
        config,
        metrics,
        baseline,
        ratio,
        notes=(
            "Both arms start from the same parameters with the same SIDs, vocabulary, model and "
            "optimizer, and train the same number of steps on the same rows; the trainer run "
            "reads them in the topic's order, the bench shuffled."
        ),
        out_dir=out_dir,
    )
    return {"metrics": metrics, "config": config}, path


def cli(argv: list[str]) -> int:
    parser = quality_parser("plum bench trainer-path", __doc__)
    parser.add_argument("--steps", type=int, default=0, help="0: one pass over the examples")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps must be >= 0, got {args.steps}")
    log_progress()
    # the rows `train_positions = "every"` writes, unless --set train_targets=one
    overrides = {"train_targets": "examples", **dict(args.set)}
    if overrides["train_targets"] not in TRAIN_POSITIONS:
        parser.error(f"--set train_targets: one of {sorted(TRAIN_POSITIONS)}")
    cfg = bench_config(parser, QualityConfig, SECTION, args.config, overrides)
    from streams.datasets import cli as data_cli

    data_cli.fetch_movielens(args.data_dir)
    doc, path = run(cfg, args.data_dir, args.steps, args.out_dir, args.config)
    print(json.dumps({k: doc["metrics"][k] for k in ("recall@10_trainer_run_minus_bench", "rows")}))
    print(f"wrote {path}")
    return 0
