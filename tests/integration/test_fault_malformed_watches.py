"""Fault test (issue 15, section 5): >= 10k malformed watches of every kind, random bytes
and oversized records, sent by an outside client (Kafka's console producer, librdkafka
for bytes that are not UTF-8) among a known valid stream, through one run of the real
Flink job. Every malformed record must land in the dead-letter topic exactly once with
the reason its kind must get, every valid watch must be accepted (the outputs equal the
plain-Python reference exactly), and the job must stay up, its dead-letter counter
agreeing by reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from streams.contracts import schema
from streams.flink.job import load_flink_config
from streams.flink.reference import RefParams, run_reference
from streams.kafka.clients import read_all
from tests import flink_support as fs
from tests import fuzz_support as fuzz
from tests import watch_fuzz_support as fz
from tests.metrics_support import dead_letters_by_reason

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 15
EVENTS = 2500  # simulator records: ~2k on the watch topic, most of them valid
MALFORMED = 10_000  # through the console producer
RAW_BYTES = 300  # records that are not UTF-8 at all, through librdkafka
HUGE_VALID = 5  # valid watches of ~200 KB
TOO_LARGE = 2  # over the topic's max.message.bytes: the broker refuses them


def test_malformed_flood_is_dead_lettered_and_valid_watches_are_kept(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    cfg = load_flink_config(fs.TEST_CONFIG)
    stream = fs.build_stream(SEED, EVENTS, cfg.out_of_orderness_ms, cfg.window_size_ms)
    body, sentinels = stream[: -fs.PARTITIONS], stream[-fs.PARTITIONS :]
    now_ms = int(time.time() * 1000)
    limits = schema.ValidationLimits(now_ms=now_ms)

    valid = []
    for _, key, value in body:
        try:
            schema.decode_watch(value or b"", limits)
        except schema.ValidationError:
            continue
        valid.append((key.decode(), json.loads(value)))
    after, sent_by_reason = fz.fuzz_lines(valid, MALFORMED, SEED, now_ms)
    assert set(sent_by_reason) == {reason for reason, _ in fz.KINDS.values()}

    # The simulator's stream in its order; each valid watch followed by the malformed
    # copies made of it (same key, so the same partition) and now and then a huge one.
    lines: list[tuple[str, str | None]] = []
    fuzz_values: Counter = Counter()
    huge = 0
    for i, (_, key, value) in enumerate(body):
        text = None if value is None else value.decode("utf-8")
        lines.append((key.decode() if key else "no-key", text))
        if value is None:
            continue
        obj = _object_or_none(value)
        event_id = obj.get("event_id") if isinstance(obj, dict) else None
        for k, line in after.get(event_id, []) if isinstance(event_id, str) else []:
            lines.append((k, line))
            fuzz_values[line.encode("utf-8")] += 1
        if huge < HUGE_VALID and i % 300 == 0 and (key.decode(), obj) in valid:
            lines.append((key.decode(), json.dumps(fz.huge_but_valid(obj, huge))))
            huge += 1
    assert sum(fuzz_values.values()) == MALFORMED and huge == HUGE_VALID
    too_large = ["z" * fuzz.TOO_LARGE_FOR_BROKER + str(i) for i in range(TOO_LARGE)]
    lines += [(f"too-large-{i}", v) for i, v in enumerate(too_large)]

    t0 = time.monotonic()
    out = fuzz.console_produce(kafka_bootstrap, topics.watches, lines)
    raw = fuzz.raw_bytes(RAW_BYTES, SEED)
    fuzz.raw_produce(kafka_bootstrap, topics.watches, raw)
    fuzz_values.update(v for _, v in raw)
    fs.produce(kafka_bootstrap, topics.watches, sentinels)
    produce_s = time.monotonic() - t0

    stored = sorted(
        (r.partition, r.offset, r.value) for r in read_all(kafka_bootstrap, topics.watches, 60)
    )
    # What Kafka holds: everything but the records over its size limit, which the broker
    # refused to the console producer (a client-side error; no component ever sees them).
    assert len(stored) == len(lines) - TOO_LARGE + RAW_BYTES + len(sentinels), out[-2000:]
    assert "RecordTooLargeException" in out, out[-2000:]
    assert max(len(v or b"") for _, _, v in stored) < 1024 * 1024

    final_watermark = json.loads(sentinels[-1][2])["ts"] - cfg.out_of_orderness_ms
    expected = run_reference(
        stored, RefParams.from_flink_config(cfg), now_ms, final_watermark, topics.watches
    )
    # The contract's view of what was sent: each malformed record gets its kind's reason
    # (random bytes: not_json), and every valid watch is accepted or (simulator delays) late.
    value_at = {(p, o): v for p, o, v in stored}
    left = Counter(fuzz_values)
    fuzz_reasons: Counter = Counter()
    for (p, o, reason), n in expected.dead.items():
        v = value_at[(p, o)]
        if left[v] > 0:
            left[v] -= 1
            fuzz_reasons[reason] += n
    assert +left == Counter(), "malformed records the reference accepted"
    assert fuzz_reasons == sent_by_reason + Counter({schema.NOT_JSON: RAW_BYTES})
    valid_stored = sum(1 for v in value_at.values() if _is_valid(v, limits))
    assert expected.accepted + Counter(r for *_, r in expected.dead)[schema.LATE] == valid_stored
    assert valid_stored == len(valid) + HUGE_VALID + len(sentinels)

    job, port = fs.start_fresh_job(kafka_bootstrap, topic_prefix, tmp_path)
    try:
        t1 = time.monotonic()
        outs = fs.wait_for_outputs(kafka_bootstrap, topics, expected, job, timeout_s=300)
        job_s = time.monotonic() - t1
        # Exactly the reference: examples, pairs, and dead letters by (partition, offset,
        # reason): each malformed record once, with its reason; no valid watch lost.
        fs.compare(outs, expected)
        for d in outs["dead"]:
            assert d.source_topic == topics.watches and d.error, d
            assert d.raw == (value_at[(d.partition, d.offset)] or b""), (d.partition, d.offset)
        # The job's dead-letter counter agrees by reason (served a poll or two behind).
        want = Counter(r for (*_, r) in expected.dead.elements())
        deadline = time.monotonic() + 60
        while True:
            by_reason = dead_letters_by_reason(fs.scrape(port))
            if by_reason == want or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert by_reason == want
        assert job.alive(), f"the job went down:\n{job.tail()}"
        print(
            f"fuzz: {len(stored)} records stored in {produce_s:.0f} s, job reconciled in "
            f"{job_s:.0f} s; dead letters {sum(want.values())} by reason {dict(want)}"
        )
    finally:
        job.stop()


def _object_or_none(value: bytes):
    try:
        return json.loads(value)
    except ValueError:
        return None


def _is_valid(value: bytes | None, limits: schema.ValidationLimits) -> bool:
    try:
        schema.decode_watch(value or b"", limits)
    except schema.ValidationError:
        return False
    return True
