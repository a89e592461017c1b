"""Fault test (issue 15, section 5): >= 10k malformed uploads of every kind the upload
contract distinguishes (embedding reasons included), random bytes, records with no value
and oversized records, sent by an outside client (Kafka's console producer, librdkafka
for bytes that are not UTF-8) among the simulator's valid uploads, to a running
`plum tokenizer serve`. Every malformed record must land in the dead-letter topic exactly
once with the reason its kind must get, every valid upload must get exactly one SID (in
plum.sid-assignments.v1 and the index), and the service must stay up, its dead-letter
counter agreeing by reason, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter

import pytest

from streams.contracts import schema
from streams.kafka.clients import read_all
from tests import fuzz_support as fuzz
from tests import upload_fuzz_support as uf
from tests.metrics_support import dead_letters_by_reason, logged_metrics_port, scrape
from tests.sid_service_support import serve_process, simulated_uploads, small_tokenizer
from tokenizer.checkpoint import save_tokenizer
from tokenizer.index import SidIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 15
MALFORMED = 10_000  # through the console producer
RAW_BYTES = 300  # records that are not UTF-8 at all, through librdkafka
TOMBSTONES = 20  # records with no value
HUGE_VALID = 3  # valid uploads of ~200 KB
NEAR_LIMIT = 3  # ~1 MB: oversized for the contract, stored by the broker
TOO_LARGE = 2  # over the topic's max.message.bytes: the broker refuses them


def test_malformed_upload_flood_is_dead_lettered_and_every_valid_upload_gets_one_sid(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    uploads = simulated_uploads()
    tokenizer = small_tokenizer(uploads)
    save_tokenizer(tokenizer, tmp_path / "tokenizer")
    limits = schema.ValidationLimits(
        now_ms=int(time.time() * 1000), embedding_dims=dict(tokenizer.modalities)
    )

    valid = [json.loads(r.value) for r in uploads if r.kind == "valid"]
    flood, sent_by_reason = uf.fuzz_uploads(valid, MALFORMED, SEED, limits)
    assert set(sent_by_reason) == {reason for reason, _ in uf.KINDS.values()}
    huge = [uf.huge_but_valid(u, i) for i, u in enumerate(valid[:HUGE_VALID])]
    lines: list[tuple[str, str | None]] = [
        (r.key.decode(), r.value.decode("utf-8"))
        for r in uploads  # the simulator's own
    ]
    lines += flood
    lines += [(u["video_id"], json.dumps(u)) for u in huge]
    lines += [(u["video_id"], None) for u in valid[:TOMBSTONES]]
    lines += [(f"big-{i}", uf.near_broker_limit(valid[i], i)) for i in range(NEAR_LIMIT)]
    lines += [(f"too-large-{i}", "z" * fuzz.TOO_LARGE_FOR_BROKER) for i in range(TOO_LARGE)]
    random.Random(SEED).shuffle(lines)
    valid_ids = {u["video_id"] for u in valid + huge}

    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = serve_process(
            kafka_bootstrap, topic_prefix, tmp_path / "tokenizer", tmp_path / "sids.sqlite", log
        )
    try:
        port = logged_metrics_port(log_path, timeout_s=180)  # JAX import, restore, warm-up
        # Sent while the service runs: the console producer in two halves, raw bytes between.
        t0 = time.monotonic()
        half = len(lines) // 2
        out = fuzz.console_produce(kafka_bootstrap, topics.uploads, lines[:half])
        fuzz.raw_produce(kafka_bootstrap, topics.uploads, fuzz.raw_bytes(RAW_BYTES, SEED))
        out += fuzz.console_produce(kafka_bootstrap, topics.uploads, lines[half:])
        produce_s = time.monotonic() - t0

        stored = {
            (r.partition, r.offset): r.value for r in read_all(kafka_bootstrap, topics.uploads)
        }
        # Everything but the records over the topic's size limit, which the broker refused
        # to the console producer (a client-side error; the service never sees them).
        assert len(stored) == len(lines) - TOO_LARGE + RAW_BYTES, out[-2000:]
        assert "RecordTooLargeException" in out, out[-2000:]
        want = {pos: _reason(value, limits) for pos, value in stored.items()}
        want_by_reason = Counter(r for r in want.values() if r is not None)
        sim_bad = Counter(r.kind for r in uploads if r.kind != "valid")
        assert want_by_reason == sent_by_reason + sim_bad + Counter(
            {schema.NOT_JSON: RAW_BYTES + TOMBSTONES, schema.OVERSIZED_PAYLOAD: NEAR_LIMIT}
        )

        # The service consumes everything and its counter agrees by reason.
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the service went down:\n{log_path.read_text()[-3000:]}"
            samples = scrape(port)
            consumed = samples.get("plum_sid_uploads_consumed_total", 0)
            if consumed == len(stored) and dead_letters_by_reason(samples) == want_by_reason:
                break
            assert time.monotonic() < deadline, (
                f"after 120 s: consumed {consumed} of {len(stored)}, dead letters "
                f"{dict(dead_letters_by_reason(samples))}, want {dict(want_by_reason)}"
            )
            time.sleep(0.5)
        work_s = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "SIGTERM received" in log_path.read_text()

    # Each malformed record dead-lettered exactly once, with its reason and its bytes.
    letters = [
        schema.decode_dead_letter(r.value) for r in read_all(kafka_bootstrap, topics.deadletter)
    ]
    positions = Counter((d.partition, d.offset) for d in letters)
    assert max(positions.values()) == 1
    assert {(d.partition, d.offset): d.reason for d in letters} == {
        pos: reason for pos, reason in want.items() if reason is not None
    }
    for d in letters:
        assert d.source_topic == topics.uploads and d.error, d
        assert d.raw == (stored[(d.partition, d.offset)] or b""), (d.partition, d.offset)

    # Each valid upload got exactly one SID, in the topic and in the index.
    assignments = [
        schema.decode_sid_assignment(r.value)
        for r in read_all(kafka_bootstrap, topics.sid_assignments)
    ]
    assert Counter(a.video_id for a in assignments) == Counter(valid_ids)
    assert len({a.sid for a in assignments}) == len(assignments)
    index = SidIndex(tmp_path / "sids.sqlite")
    try:
        assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in assignments}
    finally:
        index.close()
    print(
        f"upload fuzz: {len(stored)} records ({len(want_by_reason.keys())} reasons) sent in "
        f"{produce_s:.0f} s and reconciled {work_s:.0f} s after the first was sent; "
        f"{len(assignments)} SIDs, dead letters by reason {dict(want_by_reason)}"
    )


def _reason(value: bytes | None, limits: schema.ValidationLimits) -> str | None:
    """The reason the contract gives a stored record (no value: empty bytes), or None."""
    try:
        schema.decode_upload(value if value is not None else b"", limits)
    except schema.ValidationError as err:
        return err.reason
    return None
