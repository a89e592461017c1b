"""`plum bench trainer`: examples/s, tokens/s and input-wait fraction of the real loop.

The loop measured is the production one: `trainer.loop.ContinuousTrainer` run by
`trainer_runtime` (plum.runtime), exactly as `plum trainer run` runs it.

Against a private broker (free ports): N SFT examples (histories of `--history` items over
a synthetic catalogue with SIDs in a real SID index) are produced first; an archive of
earlier examples is filled by a first run with fresh_fraction 1; then the measured run
trains with the configured fresh/history mix until every produced example is consumed.

Baseline, same run, same model and batch shape: the jitted step alone on batches made in
advance (no Kafka, no tokenising, no archive). ratio = loop examples/s / step-only
examples/s: how much of the compute ceiling the input pipeline lets through. The
input-wait fraction is the share of the loop's wall time spent blocked in next_batch
(target <= 5%).

"loop_model_tflops_per_s" counts model FLOPs as bench/mfu.py does (PaLM appendix B: 6 x
the matrix parameters per token + the attention); on a GPU (when the device is lent)
"loop_mfu" = that / the device's peak bf16 FLOP/s (None on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np

from bench.common import bench_broker, write_result, write_sid_index
from bench.mfu import StepCost, utilisation
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import make_producer
from trainer.config import VocabConfig, model_preset
from trainer.cpt import CptConfig, build_corpus, train_cpt, vocab_for_corpus
from trainer.data import DataConfig, index_lookup_source
from trainer.loop import ContinuousTrainer, RunPaths, TrainerConfig, trainer_runtime
from trainer.model import init_params
from trainer.prompt import SidLookup, collate, sft_sequence
from trainer.step import Stepper, init_state, make_optimizer

log = logging.getLogger(__name__)

LEVELS = (64, 32, 16)


def _catalogue(n_videos: int, seed: int) -> dict[str, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    sids: dict[str, tuple[int, ...]] = {}
    taken: dict[tuple[int, ...], int] = {}
    for i in range(n_videos):
        codes = tuple(int(rng.integers(s)) for s in LEVELS)
        k = taken.get(codes, 0)
        taken[codes] = k + 1
        sids[f"v{i:05d}"] = (*codes, k)
    return sids


def _examples(n: int, start: int, videos: list[str], history: int, seed: int):
    rng = np.random.default_rng(seed + start)
    for i in range(start, start + n):
        hist = tuple(
            schema.HistoryItem(
                videos[int(v)], float(rng.uniform(0, 1.2)), float(rng.uniform(1, 600)), float(h)
            )
            for h, v in enumerate(rng.integers(0, len(videos), history))
        )
        yield schema.SftExample(
            f"e{i:07d}",
            f"u{i % 997}",
            hist,
            videos[int(rng.integers(len(videos)))],
            videos[int(rng.integers(len(videos)))],
            1.0,
            1_700_000_000_000 + i * 1000,
        )


def _produce(bootstrap: str, topic: str, examples) -> int:
    producer = make_producer(bootstrap, linger_ms=50)
    n = 0
    for ex in examples:
        producer.send(topic, key=ex.user_id.encode(), value=schema.encode(ex))
        n += 1
    producer.flush()
    producer.close()
    return n


def _step_only(model_cfg, data_cfg: DataConfig, vocab, lookup, examples, steps: int) -> dict:
    """The compute ceiling: the same jitted step on pre-built batches."""
    tx = make_optimizer(TrainerConfig().optimizer())
    state = init_state(init_params(model_cfg, jax.random.PRNGKey(0)), tx)
    stepper = Stepper(model_cfg, tx)
    seqs = [sft_sequence(e, lookup, vocab, data_cfg.max_prompt_len) for e in examples]
    b = data_cfg.batch_size
    batches = [
        collate(seqs[i : i + b], data_cfg.seq_len, vocab.pad_id)
        for i in range(0, len(seqs) - b + 1, b)
    ]
    state, m = stepper.train(state, batches[0])  # compile
    float(m.loss)
    t0 = time.perf_counter()
    tokens = 0
    for i in range(steps):
        state, m = stepper.train(state, batches[i % len(batches)])
        tokens += int(batches[i % len(batches)].mask.sum())
    float(m.loss)
    dt = time.perf_counter() - t0
    return {
        "steps": steps,
        "seconds": round(dt, 3),
        "examples_per_s": round(steps * b / dt, 1),
        "tokens_per_s": round(tokens / dt, 1),
        "step_ms": round(1000 * dt / steps, 2),
    }


def run(args: argparse.Namespace) -> Path:
    model_cfg = model_preset(args.model)
    sids = _catalogue(args.videos, args.seed)
    videos = sorted(sids)
    uploads = [
        schema.UploadEvent(
            v, 0, f"video {v} about topic {i % 50}", "", "c", (f"t{i % 50}",), 60.0, {}
        )
        for i, v in enumerate(videos)
    ]
    vocab = vocab_for_corpus(
        uploads, VocabConfig(text_vocab_size=1024, disambiguation_size=64), LEVELS
    )
    model_cfg = model_cfg.with_vocab(vocab.size)
    lookup = SidLookup("bench", sids)
    data_cfg = DataConfig(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_prompt_len=args.seq_len - 8,
        fresh_fraction=args.fresh_fraction,
        fresh_wait_ms=200,
        prefetch_batches=4,
        sid_refresh_s=60.0,
    )
    shapes = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
    params_count = sum(x.size for x in jax.tree.leaves(shapes))
    with (
        tempfile.TemporaryDirectory(prefix="plum-bench-trainer-") as tmp,
        bench_broker(args.bootstrap) as bootstrap,
    ):
        tmp = Path(tmp)
        write_sid_index(tmp / "index.sqlite", "bench", sids)
        corpus = build_corpus(uploads, [], lookup, vocab, 32)
        train_cpt(
            CptConfig(steps=1, batch_size=4, seq_len=32), model_cfg, vocab, corpus, tmp / "cpt"
        )
        prefix = f"bench-trainer-{int(time.time())}."
        ensure_topics(bootstrap, topic_set(prefix))
        topic = TopicNames.with_prefix(prefix).sft_examples

        log.info("baseline: the jitted step alone on pre-built batches")
        sample = list(_examples(args.batch_size * 8, 10**6, videos, args.history, args.seed))
        baseline = _step_only(model_cfg, data_cfg, vocab, lookup, sample, args.baseline_steps)
        log.info("step only: %s", baseline)

        # phase 1: fill the archive (fresh only), so the measured run can mix in history
        warm = _produce(
            bootstrap, topic, _examples(args.archive_examples, 0, videos, args.history, args.seed)
        )
        cfg = TrainerConfig(
            checkpoint_every_steps=10**9,
            checkpoint_every_s=10**9,
            idle_exit_s=3.0,
            log_every_s=10.0,
            async_checkpoints=True,
        )
        paths = RunPaths(tmp / "run", tmp / "cpt")
        warm_trainer = ContinuousTrainer(
            cfg,
            dataclasses.replace(data_cfg, fresh_fraction=1.0),
            paths,
            bootstrap,
            topic,
            index_lookup_source(tmp / "index.sqlite"),
        )
        trainer_runtime(warm_trainer).run()
        before = warm_trainer.counters  # the measured run resumes from its last checkpoint
        step0 = int(warm_trainer.state.step)
        log.info("archive filled with %d examples", warm)

        # phase 2: measured, the production path: the trainer component on the runtime
        n = _produce(
            bootstrap,
            topic,
            _examples(args.examples, args.archive_examples, videos, args.history, args.seed),
        )
        trainer = ContinuousTrainer(
            cfg, data_cfg, paths, bootstrap, topic, index_lookup_source(tmp / "index.sqlite")
        )
        stop = threading.Event()
        done_at: list[float] = []

        def stop_when_consumed() -> None:
            # the measured window ends when every produced example has been consumed; the
            # loop would otherwise go on training on history while Kafka is quiet
            while not stop.is_set():
                if trainer.counters.fresh_records - before.fresh_records >= n:
                    done_at.append(time.monotonic())
                    stop.set()
                time.sleep(0.01)

        watcher = threading.Thread(target=stop_when_consumed, daemon=True)
        watcher.start()
        load_before = os.getloadavg()
        result = trainer_runtime(trainer, stop).run()
        stop.set()
        load_after = os.getloadavg()
        # from the end of start() (restore, input set-up), as the old loop's clock started
        # after its constructor restored; the first step's compile is inside the window
        t0 = trainer.observer.started_at
        wall = (done_at[0] if done_at else time.monotonic()) - t0
        counters = trainer.counters
        steps = int(trainer.state.step) - step0
        fresh = counters.fresh_trained - before.fresh_trained
        hist = counters.history_trained - before.history_trained
        tokens = counters.tokens - before.tokens
        input_tokens = counters.input_tokens - before.input_tokens
        wait_fraction = trainer.metrics.value("plum_trainer_input_wait_fraction")
        log.info("baseline again after the loop (the machine's load may have changed)")
        baseline_after = _step_only(model_cfg, data_cfg, vocab, lookup, sample, args.baseline_steps)
        log.info("step only, after: %s", baseline_after)
    loop = {
        "runtime_end": result.reason,
        "steps": steps,
        "seconds": round(wall, 3),
        "examples_per_s": round((fresh + hist) / wall, 1),
        "fresh_examples": fresh,
        "history_examples": hist,
        "fresh_fraction_achieved": round(fresh / max(fresh + hist, 1), 3),
        "target_tokens_per_s": round(tokens / wall, 1),
        "tokens_per_s": round(input_tokens / wall, 1),
        "input_wait_fraction": round(wait_fraction, 4),
        # PaLM appendix-B model FLOPs (bench/mfu.py), MFU where the device's peak is known
        **utilisation(StepCost.of(model_cfg, args.seq_len), input_tokens / wall, "loop"),
        # other jobs share this machine: its load around the measured run
        "load_average_1m_before": round(load_before[0], 2),
        "load_average_1m_after": round(load_after[0], 2),
    }
    config = {
        "model": args.model,
        "parameters": int(params_count),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "history_items": args.history,
        "fresh_fraction": args.fresh_fraction,
        "examples_produced": n,
        "archive_examples": args.archive_examples,
        "videos": args.videos,
        "devices": [str(d) for d in jax.devices()],
    }
    ceiling = (baseline["examples_per_s"] + baseline_after["examples_per_s"]) / 2
    ratio = {"loop_vs_step_only_examples_per_s": round(loop["examples_per_s"] / ceiling, 3)}
    path = write_result(
        "trainer",
        config,
        loop,
        baseline={"step_only_before": baseline, "step_only_after": baseline_after},
        ratio=ratio,
        notes=(
            "tokens_per_s counts real input tokens (padding excluded), target_tokens_per_s the "
            "SID tokens the loss covers. MFU needs a GPU: not measured when accelerator is none."
        ),
    )
    log.info("loop %s | baseline %s | ratio %s -> %s", loop, baseline, ratio, path)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="use this broker instead of a private one")
    parser.add_argument("--model", default="small", help="tiny | small | paper")
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--archive-examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--history", type=int, default=16)
    parser.add_argument("--fresh-fraction", type=float, default=0.5)
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--baseline-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)
    run(args)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(cli(sys.argv[1:]))
