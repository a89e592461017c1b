"""`plum trainer run` as 2 real processes under jax.distributed (localhost coordinator).

Process i reads the partitions p % 2 == i of the fresh-examples topic; the examples are
produced to partitions 0 and 1 only, so each process's rows come in offset order and the
global batch of step k is known in advance: rows 2k, 2k+1 of partition 0 (process 0's
share, first in the mesh) then rows 2k, 2k+1 of partition 1. The test trains the same
global batches in one process here and requires the same parameters (data parallel with
replicated parameters: the gradient is the mean over all 4 rows). A job whose processes
did not share their gradients would match the run on process 0's rows alone, which the
test also computes and requires to differ.

The first run stops at step 4 (its final checkpoint), a 2-process restart resumes from
that one checkpoint directory and stops at step 8; both runs must exit 0 and leave no
process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from plum.checkpoints import CheckpointStore
from plum.ports import free_port
from streams.contracts import schema
from streams.kafka.clients import make_producer
from tests.trainer_run_support import (
    TINY_TRAINER_CONFIG,
    sft_examples,
    sid_lookup,
    small_cpt_checkpoint,
    write_sid_index,
)
from trainer.config import ModelConfig
from trainer.data import load_data_config
from trainer.loop import event_digest, load_trainer_config
from trainer.prompt import collate, sft_sequence
from trainer.step import Stepper, init_state, make_optimizer
from trainer.vocab import Vocab

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 2
PER_PARTITION = 24  # examples produced to each of partitions 0 and 1
RUN_TIMEOUT_S = 240
# fresh_wait_ms: a batch waits for its full share (2 rows) instead of going out short, so
# the batches are the ones computed below however slowly the box runs
ENV = {"PLUM_TRAINER_DATA__FRESH_WAIT_MS": "5000", "JAX_PLATFORMS": "cpu"}


CONFIG = (
    TINY_TRAINER_CONFIG
    + """
[sid]
disambiguation_size = 3

[trainer_cpt]
seq_len = 48
"""
)


@pytest.fixture
def setup(tmp_path):
    """Config, a SID index (all videos under sv1) and a small CPT checkpoint."""
    config = tmp_path / "trainer.toml"
    config.write_text(CONFIG)
    write_sid_index(tmp_path / "index.sqlite")
    small_cpt_checkpoint(tmp_path / "cpt")
    return config, tmp_path


def _produce(bootstrap: str, topic: str, by_partition: dict[int, list[schema.SftExample]]):
    producer = make_producer(bootstrap)
    for partition, examples in by_partition.items():
        for e in examples:
            producer.send(
                topic, key=e.user_id.encode(), value=schema.encode(e), partition=partition
            )
    producer.flush()
    producer.close()


def _run_job(config, bootstrap, prefix, tmp_path, max_steps: int, name: str) -> list[str]:
    """Both processes of one job to their end; returns their logs. Kills both process
    groups on any failure or timeout, and checks that nothing of them is left."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs, logs = [], []
    try:
        for i in range(PROCESSES):
            log_path = tmp_path / f"{name}-{i}.log"
            logs.append(log_path)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "plum.cli", "trainer", "run", "--config", str(config),
                     "--bootstrap", bootstrap, "--topic-prefix", prefix,
                     "--index", str(tmp_path / "index.sqlite"), "--cpt", str(tmp_path / "cpt"),
                     "--run-dir", str(tmp_path / "run"), "--max-steps", str(max_steps),
                     "--coordinator", coordinator, "--num-processes", str(PROCESSES),
                     "--process-id", str(i)],
                    cwd=ROOT,
                    env={**os.environ, **ENV},
                    stdout=log_path.open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed as one below
                )
            )  # fmt: skip
        for p in procs:
            p.wait(timeout=RUN_TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    texts = [p.read_text() for p in logs]
    for i, (p, text) in enumerate(zip(procs, texts, strict=True)):
        assert p.returncode == 0, f"{name} process {i} exited {p.returncode}:\n{text[-4000:]}"
        with pytest.raises(ProcessLookupError):  # nothing left in its process group
            os.killpg(p.pid, 0)
    return texts


def _reference_trainer(tmp_path, config):
    """train(batches) -> params after them, trained in this one process from the CPT
    params with the run's optimizer (one compiled step for every call)."""
    cpt = CheckpointStore(tmp_path / "cpt", async_save=False)
    restored, meta = cpt.restore_untyped(cpt.latest_step())
    cpt.close()
    tx = make_optimizer(load_trainer_config(config, env={}).optimizer())
    stepper = Stepper(ModelConfig.from_dict(meta["model_config"]), tx)

    def train(batches):
        state = init_state(jax.tree.map(jax.numpy.array, restored["params"]), tx)
        for batch in batches:
            state, _ = stepper.train(state, batch)
        return jax.tree.map(np.asarray, state.params)

    return train


def _close(a, b) -> bool:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: np.allclose(x, y, atol=2e-5), a, b))
    return all(leaves)


def test_two_processes_train_like_one_on_the_global_batches_and_resume_from_one_checkpoint(
    setup, topics, topic_prefix, kafka_bootstrap
):
    config, tmp_path = setup
    parts = {0: sft_examples(0, PER_PARTITION), 1: sft_examples(1000, PER_PARTITION)}
    _produce(kafka_bootstrap, topics.sft_examples, parts)

    first = _run_job(config, kafka_bootstrap, topic_prefix, tmp_path, 4, "first")
    run = tmp_path / "run"
    store = CheckpointStore(run, async_save=False)
    assert store.steps() == [3, 4]  # checkpoint_every_steps = 3, and the final one
    store.close()
    second = _run_job(config, kafka_bootstrap, topic_prefix, tmp_path, 8, "second")
    for text in second:
        assert "resuming from checkpoint 4" in text
    assert all("jax.distributed: process" in t for t in first + second)

    # one checkpoint directory, written by both processes (orbax: one tree, 2 writers)
    written = {
        p.parent
        for p in tmp_path.rglob("_CHECKPOINT_METADATA")
        if not p.is_relative_to(tmp_path / "cpt")  # the CPT checkpoint the test made
    }
    assert written == {run / "checkpoints" / str(s) for s in (4, 6, 8)}  # max_to_keep 3
    assert sorted(p.name for p in (run / "archive").iterdir()) == ["process-0", "process-1"]

    # the global batches: process 0's two rows (partition 0) first, then process 1's
    vocab = Vocab.load(run / "vocab")
    data = load_data_config(config, env={})
    seq = lambda e: sft_sequence(e, sid_lookup(), vocab, data.max_prompt_len)  # noqa: E731
    batches = [
        collate(
            [seq(e) for e in parts[0][2 * k : 2 * k + 2] + parts[1][2 * k : 2 * k + 2]],
            data.seq_len,
            vocab.pad_id,
        )
        for k in range(8)
    ]
    reference = _reference_trainer(tmp_path, config)
    store = CheckpointStore(run, async_save=False)
    for step in (4, 8):
        state, meta = store.restore_untyped(step)
        assert int(state["step"]) == step
        assert _close(state["params"], reference(batches[:step])), step
    store.close()
    # the check can fail: process 0's rows alone (no gradient exchange) give other params
    alone = [
        collate([seq(e) for e in parts[0][2 * k : 2 * k + 2]], data.seq_len, vocab.pad_id)
        for k in range(8)
    ]
    assert not _close(state["params"], reference(alone))

    # exactly once across the restart: 8 steps x 4 rows, 16 from each partition
    trained = parts[0][:16] + parts[1][:16]
    c = meta["counters"]
    assert c["fresh_records"] == c["fresh_trained"] == 32
    assert int(c["fresh_digest"]) == event_digest(e.event_id for e in trained)
    assert {int(p): o for p, o in meta["position"]["fresh_offsets"].items() if o} == {0: 16, 1: 16}
    shares = meta["processes"]
    assert [s["counters"]["fresh_trained"] for s in shares] == [16, 16]
    assert set(shares[0]["position"]["fresh_offsets"]) == {"0", "2"}
