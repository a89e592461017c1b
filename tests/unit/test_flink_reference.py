"""The Flink job's plain-Python reference on a bounded stream (what offline evaluations use)."""

from __future__ import annotations

from streams.contracts import schema
from streams.flink.job import FlinkConfig
from streams.flink.reference import RefParams, run_bounded, run_reference
from streams.simulator.config import SimulatorConfig
from streams.simulator.stream import VALID, Simulator

NOW = 2**62


def _watch_values(events: int) -> list[bytes]:
    cfg = SimulatorConfig(
        seed=3, events=events, num_users=40, initial_videos=30, bad_fraction=0.0, rate=0.0
    )
    sim = Simulator(cfg)
    return [r.value for r in sim.records() if r.kind == VALID and r.topic == sim.watch_topic]


def test_a_bounded_stream_is_one_partition_with_everything_released():
    values = _watch_values(1500)
    p = RefParams.from_flink_config(FlinkConfig(history_len=4, min_count=1))
    bounded = run_bounded(values, p, NOW)
    same = run_reference([(0, i, v) for i, v in enumerate(values)], p, NOW, None, "w")
    assert bounded.examples == same.examples and bounded.pairs == same.pairs
    assert bounded.pending == 0 and bounded.records_in == len(values)
    assert bounded.examples and bounded.pairs


def test_examples_come_in_time_order_with_histories_of_earlier_watches():
    values = _watch_values(1500)
    p = RefParams.from_flink_config(FlinkConfig(history_len=4))
    examples = run_bounded(values, p, NOW).examples_in_time_order()
    assert [(e.ts, e.event_id) for e in examples] == sorted((e.ts, e.event_id) for e in examples)
    watched = {}
    for raw in values:
        w = schema.decode_watch(raw, schema.ValidationLimits(now_ms=NOW))
        watched.setdefault(w.user_id, set()).add(w.video_id)
    for e in examples:
        assert len(e.history) <= 4
        assert all(h.hours_since >= 0 and h.video_id in watched[e.user_id] for h in e.history)
