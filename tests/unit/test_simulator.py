"""The simulator's generator: determinism, fault injection, and the structure it promises."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from monitoring.metrics import Metrics
from plum.config import REPO_ROOT, ConfigError
from streams.contracts import schema, topics
from streams.simulator.cli import (
    SimulatorProducer,
    build_parser,
    config_from_args,
    load_config,
    run,
)
from streams.simulator.config import SimulatorConfig
from streams.simulator.faults import BAD_KINDS
from streams.simulator.stream import (
    VALID,
    Simulator,
    generate,
    load_ground_truth,
    write_ground_truth,
)

SMALL = SimulatorConfig(
    seed=11,
    num_users=150,
    num_topics=8,
    latent_dim=12,
    initial_videos=120,
    new_uploads_per_sim_minute=30.0,
    events=4000,
)
FAULTY = SMALL.replace(
    events=3000, bad_fraction=0.05, out_of_order_fraction=0.05, max_delay_ms=5_000
)


def limits(cfg: SimulatorConfig, now_ms: int) -> schema.ValidationLimits:
    return schema.ValidationLimits(now_ms=now_ms, embedding_dims=cfg.dims)


def decode(rec, cfg: SimulatorConfig):
    dec = schema.decode_watch if rec.topic == topics.WATCHES else schema.decode_upload
    return dec(rec.value, limits(cfg, rec.now_ms))


@pytest.fixture(scope="module")
def faulty_run():
    sim = Simulator(FAULTY)
    return sim, list(sim.records())


@pytest.fixture(scope="module")
def clean_run():
    sim = Simulator(SMALL)
    records = list(sim.records())
    watches = [schema.decode_watch(r.value) for r in records if r.topic == topics.WATCHES]
    return sim, records, watches


def test_same_seed_gives_byte_identical_records():
    first = list(generate(FAULTY.replace(events=2000)))
    second = list(generate(FAULTY.replace(events=2000)))
    assert first == second
    other = list(generate(FAULTY.replace(events=400, seed=FAULTY.seed + 1)))
    assert [r.value for r in other] != [r.value for r in first[:400]]


def test_bad_kinds_cover_every_watch_and_upload_reason():
    # `late` is decided by the stream job's watermark, not by the record itself.
    # late: decided by the stream job; sid_space_exhausted: by the SID index
    assert set(BAD_KINDS) == set(schema.REASONS) - {
        schema.LATE,
        schema.AMBIGUOUS_USER_ID,
        schema.SID_SPACE_EXHAUSTED,
    }


@pytest.mark.parametrize("reason", sorted(BAD_KINDS))
def test_every_bad_kind_fails_with_exactly_its_reason(faulty_run, reason):
    _, records = faulty_run
    bad = [r for r in records if r.kind == reason]
    assert bad, f"no {reason} record in {len(records)} records"
    for rec in bad:
        with pytest.raises(schema.ValidationError) as err:
            decode(rec, FAULTY)
        assert err.value.reason == reason, rec.value[:200]


def test_valid_records_all_validate_and_bound_watch_time(faulty_run):
    _, records = faulty_run
    valid = [r for r in records if r.kind == VALID]
    assert len(valid) > 0.9 * len(records)
    clicked = []
    for rec in valid:
        event = decode(rec, FAULTY)  # decoding enforces the contract's bounds
        assert schema.encode(event) == rec.value  # the contract's own encoding, byte for byte
        if isinstance(event, schema.WatchEvent):
            if event.clicked:
                clicked.append(event)
            else:  # an autoplay preview: under 5% of the video (+ rounding), never a survey
                assert event.watch_time_s <= 0.05 * event.video_duration_s + 0.05
                assert event.satisfaction is None
            assert rec.key == event.user_id.encode()
        else:
            assert rec.key == event.video_id.encode()
            assert {k: len(v) for k, v in event.embeddings.items()} == FAULTY.dims
    # replays: some clicked watches run past the video's end (under the decoded bound)
    assert any(e.watch_time_s > e.video_duration_s for e in clicked)
    # a survey answer on satisfaction_fraction of clicked watches: Binomial, 5 sigma
    p, n = FAULTY.satisfaction_fraction, len(clicked)
    answered = sum(e.satisfaction is not None for e in clicked)
    assert abs(answered / n - p) < 5 * (p * (1 - p) / n) ** 0.5, (answered, n)


def test_faults_do_not_change_the_valid_records():
    clean = SMALL.replace(events=0, seconds=60.0)
    faulty = FAULTY.replace(events=0, seconds=60.0)
    clean_values = [r.value for r in generate(clean)]
    faulty_valid = [r.value for r in generate(faulty) if r.kind == VALID]
    assert len(faulty_valid) > len(clean_values) // 2
    assert sorted(faulty_valid) == sorted(clean_values)
    assert faulty_valid != clean_values  # but some watches were produced late


def test_uploads_precede_watches_of_their_video(faulty_run):
    _, records = faulty_run
    uploaded: set[str] = set()
    watched = 0
    for rec in records:
        if rec.kind != VALID:
            continue
        event = decode(rec, FAULTY)
        if isinstance(event, schema.UploadEvent):
            uploaded.add(event.video_id)
        else:
            assert event.video_id in uploaded
            assert event.context_video_id is None or event.context_video_id in uploaded
            watched += 1
    assert watched > 1000


def test_clicks_and_watch_ratio_rise_with_user_video_match(clean_run):
    sim, _, watches = clean_run
    truth = sim.ground_truth()
    centroids = np.array([t["centroid"] for t in truth["topics"]])
    user_latent = {u["user_id"]: np.array(u["interests"]) @ centroids for u in truth["users"]}
    video_latent = {v["video_id"]: np.array(v["latent"]) for v in truth["videos"]}
    match = np.array([user_latent[w.user_id] @ video_latent[w.video_id] for w in watches])
    clicked = np.array([w.clicked for w in watches], dtype=float)
    ratio = np.array([w.watch_ratio for w in watches])
    low, high = match <= np.quantile(match, 1 / 3), match >= np.quantile(match, 2 / 3)
    assert clicked[high].mean() > clicked[low].mean() + 0.2
    assert ratio[high].mean() > ratio[low].mean() + 0.1


def test_consecutive_session_watches_share_topic_far_above_chance(clean_run):
    sim, _, watches = clean_run
    topic = {v["video_id"]: v["topic"] for v in sim.ground_truth()["videos"]}
    pairs = [(topic[w.context_video_id], topic[w.video_id]) for w in watches if w.context_video_id]
    assert len(pairs) > 1000
    same = np.mean([a == b for a, b in pairs])
    shares = np.array(list(Counter(topic[w.video_id] for w in watches).values())) / len(watches)
    chance = float((shares**2).sum())
    assert same > 0.6
    assert same > 3 * chance


def test_new_uploads_arrive_over_time_and_get_watched(clean_run):
    sim, records, watches = clean_run
    uploads = [schema.decode_upload(r.value) for r in records if r.topic == topics.UPLOADS]
    initial, new = uploads[: SMALL.initial_videos], uploads[SMALL.initial_videos :]
    assert all(u.ts == SMALL.start_epoch_ms for u in initial)
    assert len(new) >= 5
    assert all(u.ts > SMALL.start_epoch_ms for u in new)
    assert [u.ts for u in new] == sorted(u.ts for u in new)
    new_ids = {u.video_id for u in new}
    assert any(w.video_id in new_ids for w in watches)
    assert sim.world.published == len(uploads)


def test_event_time_follows_the_simulated_clock():
    cfg = SMALL.replace(events=0, seconds=60.0)
    records = list(generate(cfg))
    watches = [schema.decode_watch(r.value) for r in records if r.topic == topics.WATCHES]
    ts = [w.ts for w in watches]
    assert ts == sorted(ts)  # no out-of-order fraction: event time never goes back
    assert cfg.start_epoch_ms <= ts[0] and ts[-1] < cfg.start_epoch_ms + 60_000
    expected = cfg.watches_per_sim_second * cfg.seconds
    assert abs(len(watches) - expected) < 5 * expected**0.5
    assert all(
        r.now_ms >= w.ts
        for r, w in zip([r for r in records if r.topic == topics.WATCHES], watches, strict=True)
    )


def test_out_of_order_watches_are_late_by_at_most_max_delay(faulty_run):
    sim, records = faulty_run
    newest, late = 0, []
    for rec in records:
        if rec.kind == VALID and rec.topic == topics.WATCHES:
            ts = schema.decode_watch(rec.value).ts
            if ts < newest:
                late.append(newest - ts)
            newest = max(newest, ts)
    assert sim.delayed > 0 and len(late) > 0
    assert max(late) <= FAULTY.max_delay_ms


def test_events_limit_counts_every_record(faulty_run):
    sim, records = faulty_run
    assert len(records) == FAULTY.events == sim.emitted
    assert sum(sim.counts.values()) == len(records)


def test_replay_writes_to_the_replay_topics():
    records = list(generate(SMALL.replace(events=300, replay=True, topic_prefix="t1.")))
    assert {r.topic for r in records} == {
        "t1." + topics.UPLOADS_REPLAY,
        "t1." + topics.WATCHES_REPLAY,
    }


def test_ground_truth_names_every_uploaded_video_and_user(clean_run, tmp_path):
    sim, records, _ = clean_run
    path = write_ground_truth(tmp_path / "sub" / "truth.json", sim.ground_truth())
    truth = load_ground_truth(path)
    uploaded = [
        schema.decode_upload(r.value).video_id for r in records if r.topic == topics.UPLOADS
    ]
    assert [v["video_id"] for v in truth["videos"]] == uploaded
    assert len(truth["users"]) == SMALL.num_users
    assert len(truth["topics"]) == SMALL.num_topics
    assert truth["config"]["seed"] == SMALL.seed and truth["records"] == len(records)
    video = truth["videos"][0]
    assert (
        len(video["latent"]) == SMALL.latent_dim and len(video["topic_mixture"]) == SMALL.num_topics
    )
    assert {k: len(v) for k, v in truth["projections"].items()} == SMALL.dims


def test_embeddings_carry_the_topic_structure(clean_run):
    # Same-topic videos must be closer in every modality than different-topic ones,
    # or a tokenizer has nothing to learn from.
    sim, _, _ = clean_run
    videos = sim.world.videos
    labels = np.array([v.topic for v in videos])
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(videos), dtype=bool)
    for name in SMALL.modalities:
        emb = np.array([v.embeddings[name] for v in videos])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        cos = emb @ emb.T
        assert cos[same & off_diag].mean() > cos[~same].mean() + 0.3, name


def test_config_sections_load_and_cli_flags_override(tmp_path):
    for name in ("demo.toml", "test.toml"):
        load_config(REPO_ROOT / "configs" / name)
    args = build_parser().parse_args(
        [
            "--config",
            str(REPO_ROOT / "configs" / "test.toml"),
            "--seed",
            "5",
            "--seconds",
            "30",
            "--rate",
            "100",
            "--bad-fraction",
            "0.1",
            "--out-of-order-fraction",
            "0.2",
            "--truth",
            str(tmp_path / "t.json"),
            "--topic-prefix",
            "x.",
            "--replay",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.seed, cfg.seconds, cfg.events, cfg.rate) == (5, 30.0, 0, 100.0)
    assert (cfg.bad_fraction, cfg.out_of_order_fraction) == (0.1, 0.2)
    assert (cfg.truth_path, cfg.topic_prefix, cfg.replay) == (tmp_path / "t.json", "x.", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--events", "5", "--seconds", "3"])


@pytest.mark.parametrize(
    "change",
    [{"bad_fraction": 1.5}, {"num_topics": 0}, {"embedding_dims": (32, 32)}, {"rate": -1.0}],
)
def test_config_rejects_bad_values(change):
    with pytest.raises(ConfigError):
        from plum.config import from_mapping

        from_mapping(SimulatorConfig, change, "simulator", env={})


class _FakeFuture:
    def add_errback(self, fn):
        return self


class _FakeProducer:
    def __init__(self, stop_after: int | None = None, stop: threading.Event | None = None):
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.stop_after, self.stop = stop_after, stop
        self.flushed = False

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))
        if self.stop_after is not None and len(self.sent) >= self.stop_after:
            self.stop.set()
        return _FakeFuture()

    def flush(self):
        self.flushed = True

    def close(self):
        pass


def test_run_produces_every_record_counts_metrics_and_writes_truth(tmp_path):
    cfg = SMALL.replace(events=600, bad_fraction=0.05, truth_path=tmp_path / "truth.json")
    producer, metrics = _FakeProducer(), Metrics.for_component("simulator")
    assert run(cfg, "unused:9092", metrics=metrics, producer=producer) == 0
    expected = list(generate(cfg))
    assert producer.sent == [(r.topic, r.key, r.value) for r in expected] and producer.flushed
    kinds = Counter((r.topic, r.kind) for r in expected)
    for (topic, kind), n in kinds.items():
        assert metrics.value("plum_simulator_events_total", topic=topic, kind=kind) == n
    assert load_ground_truth(cfg.truth_path)["records"] == 600


def test_run_stops_cleanly_when_asked(tmp_path):
    stop = threading.Event()
    cfg = SMALL.replace(events=0, truth_path=tmp_path / "truth.json")  # would never end
    producer = _FakeProducer(stop_after=250, stop=stop)
    assert run(cfg, "unused:9092", producer=producer, stop=stop) == 0
    assert len(producer.sent) == 250 and producer.flushed
    assert load_ground_truth(cfg.truth_path)["records"] == 250


class _ManualClock:
    """A monotonic clock that moves only when the producer waits on `stop`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _ClockStop(threading.Event):
    def __init__(self, clock: _ManualClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0.0
        return False


class _Future:
    def add_errback(self, _fn) -> None:
        pass


class _ListProducer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic, key=None, value=None) -> _Future:
        self.sent.append(value)
        return _Future()


def test_real_time_starts_the_clock_now_and_sends_each_record_at_its_simulated_time(tmp_path):
    clock = _ManualClock()
    cfg = SMALL.replace(
        real_time=True, events=200, watches_per_sim_second=50.0, truth_path=tmp_path / "t.json"
    )
    producer = SimulatorProducer(
        cfg,
        "unused:9092",
        Metrics.for_component("simulator"),
        _ListProducer(),
        clock,
        wall_clock=lambda: 1_800_000_000.0,
    )
    assert producer.cfg.start_epoch_ms == 1_800_000_000_000  # event time = wall time
    producer.start()
    stop = _ClockStop(clock)
    while not producer.step(stop).finished:
        pass
    simulated_s = (producer.sim.now_ms - producer.cfg.start_epoch_ms) / 1000
    assert producer.sent == 200 and simulated_s > 1.0  # ~200 records at 50 watches/s + uploads
    # the wall clock advanced with the simulated one: each record waited for its time
    assert clock.now - 100.0 == pytest.approx(simulated_s, abs=0.05)
