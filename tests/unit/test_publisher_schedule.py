"""The publisher end to end with a real tiny model, fake Kafka inputs and fake serving
endpoints: gate -> export -> push -> confirm, rejections never reach serving, deferrals,
rollback, restarts that neither re-push nor skip, and the component on the runtime."""

import dataclasses
import threading
import time

import pytest

from publisher.gate import GateModel, SearchCache
from publisher.ledger import DEFERRED, PUBLISHED, REJECTED, ROLLED_BACK
from publisher.schedule import Publisher, RollbackError, publisher_runtime
from serving.artifact import ModelRepository
from tests.publisher_support import (
    MAX_PROMPT_LEN,
    URL_A,
    URL_B,
    FakeInputs,
    FakeServing,
    TinyRun,
    examples,
    full_lookup,
    publisher_config,
    tiny_params,
    transport,
    with_nan,
)
from tests.trainer_data_support import N_VIDEOS

BEAMS = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Params A and B, a compiled search shared by every publisher of this module, and
    held-out examples whose targets are A's top-1: A passes any gate, B regresses."""
    run = TinyRun(tmp_path_factory.mktemp("vocab"))
    a, b = tiny_params(run.cfg, 0), tiny_params(run.cfg, 1)
    searches = SearchCache()
    model_a = GateModel("A", run.cfg, a, run.vocab, full_lookup(), MAX_PROMPT_LEN)
    exs = examples(16)
    top1 = searches.ranker(model_a, BEAMS).rank_many(exs, 1)
    exs = [dataclasses.replace(e, target_video_id=r[0]) for e, r in zip(exs, top1, strict=True)]
    return a, b, searches, exs


class World:
    """One test's run directory, inputs, fake endpoints and publishers on one state dir."""

    def __init__(self, tmp_path, models, endpoints=(URL_A,), **overrides):
        self.a, self.b, self.searches, exs = models
        self.tmp = tmp_path
        self.run = TinyRun(tmp_path / "run")
        self.repo = ModelRepository(tmp_path / "models")
        self.servers = {url: FakeServing(self.repo) for url in endpoints}
        self.inputs = FakeInputs()
        self.inputs.assign(*range(N_VIDEOS - 4))
        self.inputs.examples = list(exs)
        overrides.setdefault("gate_k", BEAMS)
        overrides.setdefault("gate_beams", BEAMS)
        self.cfg = publisher_config(tmp_path, *endpoints, **overrides)
        self.publishers: list[Publisher] = []

    def publisher(self) -> Publisher:
        pub = Publisher(
            self.cfg, self.inputs, transport=transport(self.servers), searches=self.searches
        )
        self.publishers.append(pub)
        return pub

    def close(self):
        for pub in self.publishers:
            pub.close()


@pytest.fixture
def world(tmp_path, models):
    w = World(tmp_path, models)
    yield w
    w.close()


def value(pub: Publisher, name: str, **labels) -> float:
    return pub.metrics.value(name, **labels)


def test_a_checkpoint_is_gated_exported_pushed_and_confirmed(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a, fresh_offsets={0: 7, 1: 3})
    pub = world.publisher()
    assert pub.delta_cycle() == {}  # nothing is served yet: no deltas to push anywhere
    report = pub.publish_cycle()
    assert (report.outcome, report.step, report.version, report.target) == (
        PUBLISHED,
        10,
        1,
        1,
    )
    assert report.reason == "no_served_model" and report.gate["recall_candidate"] == 1.0
    assert world.inputs.held_out_calls == [{0: 7, 1: 3}]  # from the checkpoint's position
    assert server.loads == [1] and server.model.step == 10
    assert server.seq == N_VIDEOS - 4  # the artifact's snapshot
    assert world.repo.manifest(1).gate["reason"] == "no_served_model"
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))  # four new uploads
    assert pub.delta_cycle() == {URL_A: N_VIDEOS}
    assert server.video_ids() == [f"v{i}" for i in range(N_VIDEOS)]
    assert value(pub, "plum_publisher_publishes_total") == 1
    assert value(pub, "plum_publisher_delta_seq", endpoint=URL_A) == N_VIDEOS
    assert value(pub, "plum_publisher_assignments_pending") == 0
    assert value(pub, "plum_publisher_gate_recall", model="candidate") == 1.0
    assert 0 <= value(pub, "plum_publisher_served_model_age_seconds") < 60
    assert (
        pub.metrics.registry.get_sample_value(
            "plum_publisher_push_seconds_count", {"kind": "model"}
        )
        == 1
    )
    again = pub.publish_cycle()
    assert again.outcome == "none" and server.loads == [1]  # nothing new, nothing pushed


def test_a_nan_checkpoint_is_rejected_and_never_exported_nor_pushed(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.run.save(20, with_nan(world.a))
    report = pub.publish_cycle()
    assert (report.outcome, report.reason) == (REJECTED, "non_finite_params")
    assert pub.ledger.decision(20).decision == REJECTED
    assert world.repo.versions() == [1] and server.loads == [1]
    assert len(world.inputs.held_out_calls) == 1  # no held-out read for a NaN model
    world.run.save(30, world.a, loss=float("nan"))
    assert pub.publish_cycle().reason == "non_finite_loss"
    for reason in ("non_finite_params", "non_finite_loss"):
        assert value(pub, "plum_publisher_rejections_total", reason=reason) == 1
    assert pub.ledger.target() == 1 and world.repo.versions() == [1]


def test_only_the_newest_checkpoint_is_gated_and_a_regression_is_rejected(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.run.save(20, world.a)
    world.run.save(30, world.b)
    report = pub.publish_cycle()
    assert (report.outcome, report.step, report.reason) == (REJECTED, 30, "recall_regressed")
    assert report.gate["served"] == "version 1" and report.gate["recall_served"] == 1.0
    assert pub.ledger.decision(20) is None and pub.ledger.last_decided_step() == 30
    assert pub.publish_cycle().outcome == "none"  # step 20 is never a candidate now
    assert server.loads == [1] and world.repo.versions() == [1]
    world.run.save(40, world.a)
    report = pub.publish_cycle()
    assert (report.outcome, report.version, report.reason) == (
        PUBLISHED,
        2,
        "recall_within_margin",
    )
    assert server.loads == [1, 2]


def test_too_few_held_out_examples_defer_until_there_are_enough(world):
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.run.save(20, world.a)
    everything = world.inputs.examples
    world.inputs.examples = everything[:2]
    report = pub.publish_cycle()
    assert (report.outcome, report.reason) == (DEFERRED, "too_few_examples")
    assert pub.ledger.decision(20).decision == DEFERRED
    world.inputs.examples = everything
    report = pub.publish_cycle()
    assert (report.outcome, report.step, report.version) == (PUBLISHED, 20, 2)


def test_rollback_serves_the_earlier_version_and_the_gate_compares_against_it(world):
    server = world.servers[URL_A]
    pub = world.publisher()
    for step in (10, 20):
        world.run.save(step, world.a)
        pub.publish_cycle()
    assert server.model.version == 2
    result = pub.rollback()
    assert (result["target"], result["previous_target"], result["rolled_back"]) == (2 - 1, 2, [2])
    assert server.model.version == 1 and server.loads == [1, 2, 1]
    assert pub.ledger.decision(20).decision == ROLLED_BACK
    assert result["endpoints"][0]["model_version"] == 1
    world.run.save(30, world.b)
    report = pub.publish_cycle()
    assert report.gate["served"] == "version 1" and report.reason == "recall_regressed"
    world.run.save(40, world.a)
    assert pub.publish_cycle().version == 3  # numbering goes on; 2 stays rolled back
    assert pub.ledger.previous_version() == 1
    with pytest.raises(RollbackError, match="version 9"):
        pub.rollback(9)


def test_a_restart_neither_repushes_an_acknowledged_version_nor_skips_deltas(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    first = world.publisher()
    first.publish_cycle()
    first.delta_cycle()
    # killed here; meanwhile four uploads and a serving restart that lost two deltas
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))
    del server.index[-2:]
    second = world.publisher()
    second.delta_cycle()  # no reconcile yet: from the acknowledged seq, a 409 repairs it
    second.reconcile()  # what start() does
    assert server.loads == [1]  # confirmed by /v1/status, not pushed again
    assert server.video_ids() == [f"v{i}" for i in range(N_VIDEOS)]
    applied = [d for d in server.deltas if d["status"] == 200]
    assert all(d["from_seq"] <= d["to_seq"] for d in applied)
    assert [d["status"] for d in server.deltas].count(409) == 1
    assert second.ledger.endpoint(URL_A).delta_seq == N_VIDEOS


def test_a_target_recorded_before_a_failed_push_is_pushed_after_a_restart(world):
    server = world.servers[URL_A]
    server.down = True
    world.run.save(10, world.a)
    first = world.publisher()
    report = first.publish_cycle()
    assert report.outcome == PUBLISHED and first.ledger.target() == 1
    assert value(first, "plum_publisher_push_failures_total", kind="model") == 1
    assert server.loads == []
    server.down = False
    second = world.publisher()
    second.reconcile()
    assert server.loads == [1] and server.seq == N_VIDEOS - 4
    second.reconcile()
    assert server.loads == [1]


def test_one_endpoint_down_does_not_hold_back_the_other(tmp_path, models):
    world = World(tmp_path, models, endpoints=(URL_A, URL_B))
    try:
        world.servers[URL_B].down = True
        world.run.save(10, world.a)
        pub = world.publisher()
        report = pub.publish_cycle()
        assert [(e["endpoint"], e["model_version"]) for e in report.endpoints] == [
            (URL_A, 1),
            (URL_B, None),
        ]
        world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))
        pub.delta_cycle()
        assert world.servers[URL_A].seq == N_VIDEOS
        assert value(pub, "plum_publisher_assignments_pending") == N_VIDEOS  # B has nothing
        world.servers[URL_B].down = False
        pub.publish_cycle()  # reconciles B: model, then its deltas
        assert world.servers[URL_B].loads == [1] and world.servers[URL_B].seq == N_VIDEOS
        assert value(pub, "plum_publisher_assignments_pending") == 0
    finally:
        world.close()


def test_a_failing_model_push_does_not_hold_back_new_sids(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    server.refuse.add(2)  # version 2 will not load: serving keeps answering with 1
    world.run.save(20, world.a)
    report = pub.publish_cycle()
    assert report.version == 2 and pub.ledger.target() == 2
    assert value(pub, "plum_publisher_push_failures_total", kind="model") == 1
    assert pub.ledger.endpoint(URL_A).model_version == 1  # what it really runs
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))
    pub.delta_cycle()
    assert server.model.version == 1 and server.seq == N_VIDEOS
    server.refuse.clear()
    pub.publish_cycle()  # retried every cycle until it loads
    assert server.model.version == 2 and server.seq == N_VIDEOS


def test_kafka_down_still_pushes_what_the_delta_log_has(world):
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.inputs.fail_catch_up = TimeoutError("broker unreachable")
    assert pub.delta_cycle() == {URL_A: N_VIDEOS - 4}


def test_the_component_runs_its_jobs_on_the_runtime_and_stops_cleanly(tmp_path, models):
    world = World(tmp_path, models, publish_every_s=3600.0, deltas_every_s=0.05)
    try:
        world.run.save(10, world.a)
        pub = world.publisher()
        stop = threading.Event()
        runtime = publisher_runtime(pub, stop)
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=runtime.run()))
        thread.start()
        deadline = time.monotonic() + 60
        server = world.servers[URL_A]
        # the publish job runs at start; the delta job then pushes the uploads below
        while pub.last_report is None and time.monotonic() < deadline:
            stop.wait(0.05)
        assert pub.last_report is not None, "no publish cycle within 60 s"
        world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))
        while server.seq < N_VIDEOS and time.monotonic() < deadline:
            stop.wait(0.05)
        assert server.seq == N_VIDEOS, f"deltas not pushed within 60 s (seq {server.seq})"
        assert "target 1, 1/1 endpoints on it" in pub.describe()
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
        assert result["r"].reason == "stopped" and pub._scheduler is None
        assert server.loads == [1] and pub.errors == 0
    finally:
        world.close()


def test_a_publisher_with_a_lost_state_follows_what_serving_loaded(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    world.publisher().publish_cycle()
    world.cfg = dataclasses.replace(world.cfg, state_dir=str(world.tmp / "new-state"))
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS))
    fresh = world.publisher()
    assert fresh.ledger.target() is None and fresh.served_version() == 1  # the repository's
    fresh.delta_cycle()  # nothing acknowledged yet: no deltas
    assert server.seq == N_VIDEOS - 4
    fresh.reconcile()  # status: it runs version 1; nothing pushed, its deltas follow it
    assert server.loads == [1] and server.seq == N_VIDEOS
    world.run.save(20, world.b)
    report = fresh.publish_cycle()  # gated against the repository's newest version
    assert report.gate["served"] == "version 1" and report.reason == "recall_regressed"


# ------------------------------------------------------------------ SID version switch


def test_a_new_sid_version_goes_out_with_its_own_index_and_then_only_its_deltas(world, monkeypatch):
    import publisher.schedule

    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    assert (server.model.version, server.index_version) == (1, "v1")
    world.inputs.assign(*range(N_VIDEOS - 4), version="v2")  # `plum tokenizer reindex`
    gated = []
    real_gate = publisher.schedule.gate

    def spy(candidate, served, *args, **kwargs):
        gated.append((candidate.lookup.version, served.lookup.version))
        return real_gate(candidate, served, *args, **kwargs)

    monkeypatch.setattr(publisher.schedule, "gate", spy)
    world.run.save(20, world.a, sid_version="v2")
    report = pub.publish_cycle()
    assert (report.outcome, report.version) == (PUBLISHED, 2), report
    assert gated == [("v2", "v1")]  # each model read the examples through its own SIDs
    manifest = world.repo.manifest(2)
    assert (manifest.sid_version, manifest.index_seq) == ("v2", N_VIDEOS - 4)
    assert server.loads == [1, 2] and (server.index_version, server.seq) == ("v2", N_VIDEOS - 4)
    assert pub.ledger.endpoint(URL_A).sid_version == "v2"
    # new uploads: the old version's SID service still runs, the new one's too
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS), version="v1")
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS), version="v2")
    assert pub.delta_cycle() == {URL_A: N_VIDEOS}
    assert server.index_version == "v2" and server.video_ids() == [f"v{i}" for i in range(N_VIDEOS)]
    assert [d["status"] for d in server.deltas] == [200]  # never a delta of v1 to a v2 index
    # a rollback restores the old pair, and the old version's deltas follow it again
    pub.rollback()
    assert (server.model.version, server.index_version) == (1, "v1")
    assert pub.ledger.endpoint(URL_A).sid_version == "v1"
    assert pub.delta_cycle() == {URL_A: N_VIDEOS}
    assert [d["status"] for d in server.deltas] == [200, 200]


def test_a_sid_version_switch_waits_for_the_new_versions_complete_index(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.inputs.assign(*range(8), version="v2")  # the reindex is under way
    world.run.save(20, world.a, sid_version="v2")
    report = pub.publish_cycle()
    assert (report.outcome, report.reason) == (DEFERRED, "sid_version_incomplete")
    assert f"holds 8 of the {N_VIDEOS - 4} videos served" in report.gate["detail"]
    assert world.repo.versions() == [1] and server.loads == [1]  # nothing serving would refuse
    assert len(world.inputs.held_out_calls) == 1  # not even gated
    world.inputs.assign(*range(8, N_VIDEOS - 4), version="v2")  # the reindex finished
    report = pub.publish_cycle()
    assert (report.outcome, report.step, report.version) == (PUBLISHED, 20, 2)
    assert (server.model.sid_version, server.index_version) == ("v2", "v2")


def test_a_checkpoint_of_a_sid_version_never_assigned_is_still_rejected(world):
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.run.save(20, world.a, sid_version="v9")
    report = pub.publish_cycle()
    assert (report.outcome, report.reason) == (REJECTED, "sid_version_unknown")


def test_deltas_follow_an_endpoint_switched_behind_the_publishers_back(world):
    server = world.servers[URL_A]
    world.run.save(10, world.a)
    pub = world.publisher()
    pub.publish_cycle()
    world.inputs.assign(*range(N_VIDEOS - 4), version="v2")
    world.run.save(20, world.a, sid_version="v2")
    pub.publish_cycle()
    pub.rollback()  # serving runs version 1 (v1); the ledger knows it
    server._load(2, None)  # an operator loads version 2 (v2) directly
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS), version="v1")
    world.inputs.assign(*range(N_VIDEOS - 4, N_VIDEOS), version="v2")
    pub.delta_cycle()  # v1 deltas: 409 naming v2; the publisher re-reads its status
    assert pub.ledger.endpoint(URL_A).sid_version == "v2"
    assert pub.delta_cycle() == {URL_A: N_VIDEOS}
    assert server.index_version == "v2" and server.seq == N_VIDEOS
