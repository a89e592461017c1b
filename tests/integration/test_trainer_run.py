"""The continuous trainer against the real broker: CPT from Kafka, SFT from Kafka, kill -9.

`plum trainer run` is started as a real process; it is killed with SIGKILL after it has
saved a few checkpoints, more examples are produced, and it is started again. The last
checkpoint must then account for every produced example exactly once (count and an
order-free digest of the event ids), the archive must hold each consumed example once,
and the saved offsets must be the topic's end.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from plum.checkpoints import CheckpointStore
from plum.ports import free_port
from streams.contracts import schema
from tests.flink_support import scrape
from tests.metrics_support import catalogue_names, scrape_until_complete
from tests.trainer_run_support import (
    TINY_TRAINER_CONFIG,
    VIDEOS,
    produce,
    sft_examples,
    small_cpt_checkpoint,
    tokenizer_checkpoint,
    write_sid_index,
)
from trainer.data import index_lookup_source, load_data_config
from trainer.loop import (
    ContinuousTrainer,
    RunPaths,
    event_digest,
    load_trainer_config,
    trainer_runtime,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


CONFIG = (
    TINY_TRAINER_CONFIG
    + """
[sid]
disambiguation_size = 3

[trainer_cpt]
steps = 4
batch_size = 4
seq_len = 48
log_every_s = 1.0
"""
)


def _config_and_index(tmp_path: Path) -> tuple[Path, Path]:
    """The test's config file and a SID index with every video under active version sv1."""
    config = tmp_path / "trainer.toml"
    config.write_text(CONFIG)
    return config, write_sid_index(tmp_path / "index.sqlite")


@pytest.fixture
def run_setup(tmp_path, topics, kafka_bootstrap):
    config, index_path = _config_and_index(tmp_path)
    small_cpt_checkpoint(tmp_path / "cpt")  # the CLI path of CPT is tested below
    return config, index_path, tmp_path


def _run_cmd(config, bootstrap, prefix, index_path, tmp_path, *extra) -> list[str]:
    return [
        sys.executable, "-m", "plum.cli", "trainer", "run", "--config", str(config),
        "--bootstrap", bootstrap, "--topic-prefix", prefix, "--index", str(index_path),
        "--cpt", str(tmp_path / "cpt"), "--run-dir", str(tmp_path / "run"), *extra,
    ]  # fmt: skip


def _wait_for_checkpoint(run_dir: Path, min_step: int, proc, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    ckpts = run_dir / "checkpoints"
    while time.monotonic() < deadline:
        steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= min_step:
            return max(steps)
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint >= {min_step} under {ckpts} after {timeout_s} s")


TRAINER_METRICS = catalogue_names("trainer")


def test_kill_9_and_restart_trains_every_example_exactly_once(
    run_setup, topics, topic_prefix, kafka_bootstrap
):
    config, index_path, tmp_path = run_setup
    first = sft_examples(0, 120, unknown_every=25)
    second = sft_examples(120, 80, unknown_every=25)
    malformed = [b"{not json", b'{"schema": 1, "event_id": 5}']
    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in first] + malformed)

    cmd = _run_cmd(config, kafka_bootstrap, topic_prefix, index_path, tmp_path)
    log1 = (tmp_path / "run1.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log1, stderr=subprocess.STDOUT)
    try:
        killed_after = _wait_for_checkpoint(tmp_path / "run", 9, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in second])
    proc2 = subprocess.run(
        [*cmd, "--idle-exit", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc2.returncode == 0, proc2.stdout[-2000:] + proc2.stderr[-4000:]
    assert "resuming from checkpoint" in proc2.stderr

    store = CheckpointStore(tmp_path / "run", async_save=False)
    meta = store.restore_meta(store.latest_step())
    store.close()
    produced = first + second
    c = meta["counters"]
    unknown = sum(e.target_video_id == "unknown-video" for e in produced)
    assert c["fresh_records"] == len(produced)
    assert int(c["fresh_digest"]) == event_digest(e.event_id for e in produced)
    assert c["fresh_trained"] == len(produced) - unknown
    assert c["skipped_unknown"] == unknown
    assert c["malformed"] == len(malformed)
    assert c["history_trained"] == 0
    assert meta["sid_version"] == "sv1"
    ends = {0: 0, 1: 0, 2: 0, 3: 0}
    from streams.kafka.clients import read_all

    for rec in read_all(kafka_bootstrap, topics.sft_examples):
        ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
    offsets = {int(p): o for p, o in meta["position"]["fresh_offsets"].items()}
    assert offsets == {p: o for p, o in ends.items() if p in offsets}
    assert sum(offsets.values()) == len(produced) + len(malformed)
    assert meta["model_config"]["vocab_size"] > 0 and killed_after >= 9

    archived = [
        eid
        for part in (tmp_path / "run" / "archive").rglob("*.parquet")
        for eid in pq.read_table(part, columns=["event_id"]).column("event_id").to_pylist()
    ]
    assert sorted(archived) == sorted(e.event_id for e in produced)


def test_sigterm_checkpoints_and_exits_zero_and_the_checkpoint_evaluates(
    run_setup, topics, topic_prefix, kafka_bootstrap
):
    config, index_path, tmp_path = run_setup
    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in sft_examples(0, 40)])
    port = free_port()
    cmd = _run_cmd(
        config, kafka_bootstrap, topic_prefix, index_path, tmp_path, "--metrics-port", str(port)
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_checkpoint(tmp_path / "run", 3, proc)
        scraped = scrape_until_complete(port, TRAINER_METRICS)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    counters = json.loads(out.strip().splitlines()[-1])
    store = CheckpointStore(tmp_path / "run", async_save=False)
    meta = store.restore_meta(store.latest_step())
    store.close()
    assert meta["counters"]["fresh_records"] == counters["fresh_records"] > 0
    # 40 examples on the topic, all read by the time of the scrape or not: lag <= 40
    lags = [v for name, v in scraped if name == "plum_trainer_consumer_lag"]
    assert lags and all(0 <= v <= 40 for v in lags)

    report_path = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "plum.cli", "trainer", "eval", "--config", str(config),
         "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix, "--index",
         str(index_path), "--checkpoint", str(tmp_path / "run"), "--holdout", "0.25",
         "--beams", "5", "--out", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert report["num_examples"] == 10 and report["checkpoint_kind"] == "sft"
    assert set(report["rankers"]) == {"popularity", "cooccurrence", "model", "model_unconstrained"}
    # popularity by hand: the 30 training targets are v0..v23 once and v0..v5 again, ties go
    # by id, so its top 10 is v0..v5 v10..v13; of the fresh targets v6..v15 it finds 4
    assert report["rankers"]["popularity"]["recall@10"] == pytest.approx(0.4)
    # 5 beams rank at most 5 videos: nothing more is found by rank 10 than by rank 5
    assert report["rankers"]["model"]["recall@10"] == report["rankers"]["model"]["recall@5"]
    assert report["rankers"]["model"]["hallucination_rate"] == 0.0


def _two_step_trainer(run_setup, topics, bootstrap, data_env=None) -> ContinuousTrainer:
    """The test config's trainer, in process, stopping at step 2; `data_env` overrides
    its [trainer_data]."""
    config, index_path, tmp_path = run_setup
    return ContinuousTrainer(
        load_trainer_config(config, env={}, bootstrap=bootstrap, max_steps=2),
        load_data_config(config, env=data_env or {}),
        RunPaths(tmp_path / "run", tmp_path / "cpt"),
        bootstrap,
        topics.sft_examples,
        index_lookup_source(index_path),
    )


def test_max_steps_ends_the_run_with_a_checkpoint_at_that_step(run_setup, topics, kafka_bootstrap):
    """In process, on the runtime: the run is "finished" at max_steps and the runtime's
    final checkpoint (not the every-3-steps one) holds step 2; a restart trains no more."""
    tmp_path = run_setup[2]
    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in sft_examples(0, 40)])
    first = _two_step_trainer(run_setup, topics, kafka_bootstrap)
    assert trainer_runtime(first).run().reason == "finished"
    again = _two_step_trainer(run_setup, topics, kafka_bootstrap)
    result = trainer_runtime(again).run()
    assert (result.reason, result.done, int(again.state.step)) == ("finished", 0, 2)
    store = CheckpointStore(tmp_path / "run", async_save=False)
    meta = store.restore_meta(store.latest_step())
    assert store.steps() == [2]
    store.close()
    assert meta["counters"]["fresh_trained"] == 2 * 4 == first.counters.fresh_trained
    assert sum(meta["position"]["fresh_offsets"].values()) == 8


def test_every_position_training_trains_each_examples_history_and_target_from_kafka(
    run_setup, topics, kafka_bootstrap
):
    """[trainer_data] prompt_layout = "sequence", train_positions = "every": the run trains
    each consumed example once, the loss on the SIDs of its history items (all but the
    first) and of its target, and its checkpoints say so."""
    from trainer.prompt import every_position_sequence
    from trainer.vocab import Vocab

    _, index_path, tmp_path = run_setup
    examples = sft_examples(0, 40)
    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in examples])
    env = {
        "PLUM_TRAINER_DATA__PROMPT_LAYOUT": "sequence",
        "PLUM_TRAINER_DATA__TRAIN_POSITIONS": "every",
    }
    trainer = _two_step_trainer(run_setup, topics, kafka_bootstrap, env)
    assert trainer_runtime(trainer).run().reason == "finished"
    data_cfg, lookup = trainer.data_cfg, index_lookup_source(index_path)
    store = CheckpointStore(tmp_path / "run", async_save=False)
    meta = store.restore_meta(store.latest_step())
    store.close()
    assert meta["data_config"]["train_positions"] == "every"
    assert meta["counters"]["fresh_trained"] == 8  # 2 steps of 4, each example once
    vocab = Vocab.load(tmp_path / "cpt" / "vocab")
    # every example written so has 3 SIDs under the loss: 2 history items and the target
    per_row = {
        sum(every_position_sequence(e, lookup(), vocab, data_cfg.max_prompt_len).loss_mask)
        for e in examples
    }
    assert per_row == {3 * vocab.num_sid_slots}
    assert meta["counters"]["tokens"] == 8 * 3 * vocab.num_sid_slots  # 3 SIDs a row, not 1


def test_cpt_cli_reads_uploads_and_watches_from_kafka(
    tmp_path, topics, topic_prefix, kafka_bootstrap
):
    config, index_path = _config_and_index(tmp_path)
    tok_dir = tokenizer_checkpoint(tmp_path / "tok")
    uploads = [
        schema.UploadEvent(
            v, 1_700_000_000_000, f"title {v}", "", "c", ("t",), 60.0, {"text": (0.1, 0.2)}
        )
        for v in VIDEOS
    ]
    watches = [
        schema.WatchEvent(
            f"w{i}",
            f"u{i % 5}",
            VIDEOS[i % 24],
            1_700_000_000_000 + i * 1000,
            30.0,
            60.0,
            True,
            "home",
        )
        for i in range(60)
    ]
    produce(kafka_bootstrap, topics.uploads, [schema.encode(u) for u in uploads])
    produce(kafka_bootstrap, topics.watches_replay, [schema.encode(w) for w in watches] + [b"bad"])
    proc = subprocess.run(
        [sys.executable, "-m", "plum.cli", "trainer", "cpt", "--config", str(config),
         "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix, "--index", str(index_path),
         "--tokenizer", str(tok_dir), "--out", str(tmp_path / "cpt")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "read 24 uploads, 60 watches (1 invalid records skipped)" in proc.stderr
    store = CheckpointStore(tmp_path / "cpt", async_save=False)
    meta = store.restore_meta(store.latest_step())
    store.close()
    assert meta["sid_version"] == "sv1"
    assert meta["corpus"]["metadata_sequences"] == 48
    # 5 users x 12 watches x 7 tokens (4 SID + 3 features) do not fit 49 tokens: 2 chunks each
    assert meta["corpus"]["behaviour_sequences"] == 10


def test_a_full_disk_keeps_the_last_good_checkpoint_and_checkpointing_resumes_with_space(
    run_setup, topics, topic_prefix, kafka_bootstrap
):
    """Fault test (issue 15, section 5): the trainer's disk fills up mid-run. A file size
    limit of 0 on the running process (RLIMIT_FSIZE via prlimit: every write that grows a
    file fails with EFBIG, for root too, as on a full disk; logs go to a pipe) makes its
    checkpoints fail: it keeps training, counts and logs each failure, and the last good
    checkpoint stays the newest and restorable. With the limit lifted the next checkpoint
    succeeds; after kill -9 and a restart every example is trained exactly once."""
    config, index_path, tmp_path = run_setup
    first, second, third = sft_examples(0, 60), sft_examples(60, 60), sft_examples(120, 40)
    produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in first])
    port = free_port()
    cmd = _run_cmd(config, kafka_bootstrap, topic_prefix, index_path, tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        _wait_for_checkpoint(run_dir, 3, proc)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in second])
        failures = _poll_metric(port, "plum_trainer_checkpoint_failures_total", 2, proc)
        last_good = max(_finalized_steps(run_dir))
        assert proc.poll() is None, "the trainer went down on a full disk"
        store = CheckpointStore(run_dir, async_save=False)
        assert store.latest_step() == last_good
        meta = store.restore_meta(last_good)
        store.close()
        assert 0 < meta["counters"]["fresh_records"] < len(first) + len(second)
        assert any("checkpoint failed" in line for line in lines), "".join(lines[-50:])

        resource.prlimit(
            proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        produce(kafka_bootstrap, topics.sft_examples, [schema.encode(e) for e in third])
        recovered = _wait_for_checkpoint(run_dir, last_good + 1, proc)
        assert max(_finalized_steps(run_dir)) == recovered > last_good
        assert _poll_metric(port, "plum_trainer_checkpoint_failures_total", 0, proc) >= failures
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    again = subprocess.run(
        [*cmd, "--idle-exit", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert "resuming from checkpoint" in again.stderr
    store = CheckpointStore(run_dir, async_save=False)
    meta = store.restore_meta(store.latest_step())
    store.close()
    produced = first + second + third
    c = meta["counters"]
    assert c["fresh_records"] == c["fresh_trained"] == len(produced)
    assert int(c["fresh_digest"]) == event_digest(e.event_id for e in produced)
    assert sum(meta["position"]["fresh_offsets"].values()) == len(produced)
    archived = [
        eid
        for part in (run_dir / "archive").rglob("*.parquet")
        for eid in pq.read_table(part, columns=["event_id"]).column("event_id").to_pylist()
    ]
    assert sorted(archived) == sorted(e.event_id for e in produced)


def _finalized_steps(run_dir: Path) -> list[int]:
    return [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]


def _poll_metric(port: int, name: str, at_least: float, proc, timeout_s: float = 180) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = scrape(port).get(name, 0.0)
        except OSError:
            value = -1.0  # /metrics not up yet
        if value >= at_least:
            return value
        assert proc.poll() is None, f"trainer exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{name} = {value} < {at_least} after {timeout_s} s"
        time.sleep(0.2)
