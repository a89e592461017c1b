"""The publisher: a plum.runtime Component running two apscheduler jobs.

    publish job, every publish_every_s                 delta job, every deltas_every_s
      delta log catch-up from Kafka                       delta log catch-up from Kafka
      newest trainer checkpoint after the last decided    to each endpoint: what its
      gate (finite; Recall@k vs served, same examples)      index lacks, of its index's
      rejected / deferred -> ledger                         sid_version, from its
      passed -> export -> ledger (decision + target)        acknowledged seq (409 ->
      every endpoint: /v1/status != target -> push model,   re-send from expected_seq)
        confirm by /v1/status, then its deltas

SID version switch (a checkpoint trained on another sid_version than the served model's,
after `plum tokenizer reindex`): the checkpoint is gated against the served model on the
same held-out examples, each model reading them through its own version's SIDs; it is
exported with the snapshot of ITS version from the delta log, and pushed as one (model,
index) pair. Until the delta log holds a complete index of the new version (dense, and
`serving.artifact.SWITCH_MIN_COVERAGE` of the served version's videos) the checkpoint is
deferred (`sid_version_incomplete`), never pushed for serving to refuse. Deltas always
follow the sid_version each endpoint's index reports, so after the switch only the new
version's deltas go out, and before it only the old one's.

`served_version()` is what the gate compares against: the ledger's target, or, before
this publisher has decided anything, the newest version of the model repository (what
serving loads on start). The deltas follow each endpoint's own index (as /v1/status and
the delta replies acknowledged it), so a new SID reaches an endpoint even while a model
push to it fails, and a sid_version only changes with a model.

The jobs run in the scheduler's threads (max_instances=1, coalesce=True: a cycle that
overruns is not stacked). Pushes to one endpoint are serialised by a per-endpoint lock;
the delta job skips an endpoint whose model push is in flight rather than wait behind its
warm-up, and gating holds no endpoint lock, so deltas keep flowing while a gate runs.

Start = open, catch up, reconcile every endpoint (the restart path after a kill -9: the
target is pushed again only where /v1/status differs, deltas resume from the endpoint's
position), then the scheduler. SIGTERM (the runtime) -> `checkpoint()` shuts the scheduler
down, waiting for the cycle in hand, and the process exits 0. `publish_cycle()` and
`delta_cycle()` can also be called directly (tests, `plum publish once`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from monitoring.metrics import Metrics
from plum.runtime import Runtime, RuntimeConfig, Step
from publisher.config import PublisherConfig
from publisher.deltas import DeltaLog
from publisher.export import (
    CheckpointError,
    TrainerCheckpoint,
    checkpoint_steps,
    export,
    read_checkpoint,
)
from publisher.gate import (
    DEFER,
    PASS,
    REJECTIONS,
    GateModel,
    GateResult,
    GateSettings,
    SearchCache,
    finiteness,
    gate,
    held_out_examples,
)
from publisher.ledger import DEFERRED, PUBLISHED, REJECTED, Ledger
from publisher.push import PushError, ServingClient, ServingStatus, push_deltas, push_model
from serving.artifact import ArtifactError, Manifest, ModelRepository, switch_shortfall
from streams.contracts.schema import SftExample
from streams.contracts.topics import TopicNames
from trainer.config import ModelConfig
from trainer.prompt import SidLookup
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

NOT_A_TRAINER_CHECKPOINT = "not_a_trainer_checkpoint"
SID_VERSION_INCOMPLETE = "sid_version_incomplete"  # deferred: the new version's log is short
KAFKA_TIMEOUT_S = 60.0


class Inputs(Protocol):
    """What the publisher reads from Kafka (KafkaInputs; a fake in unit tests)."""

    def catch_up(self, deltas: DeltaLog) -> int:
        """Bring the delta log up to the end of the SID assignments topic."""
        ...

    def held_out(self, start: Mapping[int, int], n: int) -> list[SftExample]:
        """The newest `n` SFT examples at or after `start` (partition -> offset)."""
        ...


class KafkaInputs:
    """Inputs from the broker: the assignments and SFT-examples topics of `topic_prefix`."""

    def __init__(self, bootstrap: str, topic_prefix: str, timeout_s: float = KAFKA_TIMEOUT_S):
        self.bootstrap = bootstrap
        self.topics = TopicNames.with_prefix(topic_prefix)
        self.timeout_s = timeout_s

    def catch_up(self, deltas: DeltaLog) -> int:
        return deltas.catch_up(self.bootstrap, self.topics.sid_assignments, self.timeout_s)

    def held_out(self, start: Mapping[int, int], n: int) -> list[SftExample]:
        return held_out_examples(self.bootstrap, self.topics.sft_examples, start, n, self.timeout_s)


@dataclass
class PublishReport:
    """What one publish cycle decided; `plum publish once` prints it as {"publish": ...}."""

    outcome: str  # published | rejected | deferred | none (no new checkpoint) | error
    step: int | None = None
    version: int | None = None
    reason: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    target: int | None = None
    endpoints: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "step": self.step,
            "version": self.version,
            "reason": self.reason,
            "gate": self.gate,
        }


class RollbackError(ValueError):
    """No version to roll back to, or one the model repository does not hold."""


@dataclass(frozen=True)
class _ServedModel:
    """The served version's parts the gate needs, cached while the version stays."""

    version: int
    sid_version: str
    model_config: ModelConfig
    params: Any
    vocab: Vocab
    max_prompt_len: int
    prompt_layout: str


class Publisher:
    """See the module docstring. A plum.runtime Component (`publisher_runtime`)."""

    def __init__(
        self,
        cfg: PublisherConfig,
        inputs: Inputs | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        metrics: Metrics | None = None,
        searches: SearchCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`inputs` default: Kafka at cfg.bootstrap; `transport`: httpx's (a fake in
        tests); `searches`: compiled beam searches to start from (tests share one)."""
        self.cfg = cfg
        self.metrics = metrics or Metrics.for_component("publisher")
        self.inputs = inputs or KafkaInputs(cfg.bootstrap, cfg.topic_prefix)
        self.settings = GateSettings(
            cfg.gate_k, cfg.gate_margin, cfg.gate_beams, cfg.gate_min_examples
        )
        self.repo = ModelRepository(cfg.model_repo_path)
        self.ledger = Ledger(cfg.state_path)
        self.deltas = DeltaLog(cfg.state_path)
        self.clients = {
            url: ServingClient(url, cfg.admin_token, cfg.push_timeout_s, transport)
            for url in cfg.endpoints
        }
        self._push_locks = {url: threading.Lock() for url in cfg.endpoints}
        self._publish_lock = threading.Lock()  # one publish cycle or rollback at a time
        self._catch_up_lock = threading.Lock()
        self._served: _ServedModel | None = None
        self._searches = searches or SearchCache()
        self._manifests: dict[int, Manifest] = {}
        self._scheduler: Any = None  # apscheduler BackgroundScheduler while running
        self._clock = clock
        self._cycles = 0
        self._cycles_reported = 0
        self.last_report: PublishReport | None = None
        self.errors = 0  # cycles that raised (logged; the next cycle retries)
        self._declare_labels()

    def _declare_labels(self) -> None:
        """Every known label value at 0, so a scrape (and a rate() over it) sees the
        series before their first event: a rejection reason that never happened reads 0,
        not absent."""
        m = self.metrics
        for reason in REJECTIONS:
            m.counter("plum_publisher_rejections_total").labels(reason=reason)
        for kind in ("model", "delta"):
            m.counter("plum_publisher_push_failures_total").labels(kind=kind)
            m.histogram("plum_publisher_push_seconds").labels(kind=kind)

    # ------------------------------------------------------------------ the component
    def start(self) -> None:
        """Catch up, reconcile every endpoint with the ledger, then start both jobs."""
        from apscheduler.schedulers.background import BackgroundScheduler

        self._catch_up()
        with self._publish_lock:
            self.reconcile()
        scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        scheduler.add_job(
            self._job,
            "interval",
            args=("publish", self.publish_cycle),
            seconds=self.cfg.publish_every_s,
            id="publish",
            next_run_time=datetime.now(),  # a waiting checkpoint is gated at once
        )
        scheduler.add_job(
            self._job,
            "interval",
            args=("delta", self.delta_cycle),
            seconds=self.cfg.deltas_every_s,
            id="deltas",
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "publisher: %s -> %s, endpoints %s; publish every %.0f s, deltas every %.1f s",
            self.cfg.run_dir,
            self.cfg.model_repo,
            list(self.clients),
            self.cfg.publish_every_s,
            self.cfg.deltas_every_s,
        )

    def step(self, stop: threading.Event) -> Step:
        """The jobs do the work; the runtime's loop only waits for a stop."""
        stop.wait(1.0)
        done, self._cycles_reported = self._cycles - self._cycles_reported, self._cycles
        return Step(done=done, active=True)

    def checkpoint(self) -> None:
        """Every write is already durable; stop the jobs after the cycle in hand."""
        self._shutdown()

    def close(self) -> None:
        self._shutdown()
        for client in self.clients.values():
            client.close()
        self.ledger.close()
        self.deltas.close()

    def describe(self) -> str:
        target = self.served_version()
        acked = [e for e in self.ledger.endpoints() if e.endpoint in self.clients]
        confirmed = sum(e.model_version == target for e in acked)
        last = self.last_report
        text = f"target {target}, {confirmed}/{len(self.clients)} endpoints on it"
        if last is not None:
            text += f", last decision {last.outcome} (step {last.step})"
        return text

    def _shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def _job(self, name: str, cycle: Callable[[], Any]) -> None:
        try:
            cycle()
        except Exception:  # noqa: BLE001 - a cycle's failure is logged, the next one retries
            self.errors += 1
            log.exception("publisher: %s cycle failed", name)
        finally:
            self._cycles += 1

    # ------------------------------------------------------------------ publish
    def served_version(self) -> int | None:
        """The ledger's target, else the repository's newest version (what serving loads on
        start when nothing was pushed to it)."""
        target = self.ledger.target()
        return target if target is not None else self.repo.latest()

    def publish_cycle(self) -> PublishReport:
        """Gate the newest undecided checkpoint, record and publish it; then make every
        endpoint run the target (and have its deltas)."""
        with self._publish_lock:
            report = self._decide()
            self.reconcile()
            report.target = self.ledger.target()
            report.endpoints = self.endpoint_states()
            self.last_report = report
            return report

    def _decide(self) -> PublishReport:
        caught_up = self._catch_up()  # the gate's lookup and the export's snapshot: fresh
        last = self.ledger.last_decided_step()
        steps = [s for s in checkpoint_steps(self.cfg.run_path) if last is None or s > last]
        if not steps:
            return PublishReport("none", reason="no checkpoint after the last decided step")
        step = steps[-1]
        try:
            checkpoint = read_checkpoint(self.cfg.run_path, step)
        except CheckpointError as err:
            return self._reject(step, NOT_A_TRAINER_CHECKPOINT, {"detail": str(err)})
        except Exception as err:  # noqa: BLE001 - deleted by the trainer's retention, damaged
            log.warning("step %d does not restore (%s); retried next cycle", step, err)
            return PublishReport("error", step, reason=f"checkpoint does not restore: {err}")
        if not caught_up and checkpoint.sid_version and not self.deltas.seq(checkpoint.sid_version):
            # the log may only be behind: deciding "sid_version_unknown" now would be final
            return PublishReport("error", step, reason="SID assignments unreadable")
        shortfall = self._switch_shortfall(checkpoint)
        if shortfall is not None:
            self.ledger.decide(step, DEFERRED, SID_VERSION_INCOMPLETE, {"detail": shortfall})
            log.info("deferred step %d (a SID version switch): %s", step, shortfall)
            return PublishReport(
                DEFERRED, step, reason=SID_VERSION_INCOMPLETE, gate={"detail": shortfall}
            )
        result = self._gate(checkpoint)
        if result is None:
            return PublishReport("error", step, reason="held-out examples unreadable")
        for model in ("candidate", "served"):
            recall = result.metrics.get(f"recall_{model}")
            if recall is not None:
                self.metrics.gauge("plum_publisher_gate_recall").labels(model=model).set(recall)
        if result.outcome == PASS:
            return self._publish(checkpoint, result)
        if result.outcome == DEFER:
            self.ledger.decide(step, DEFERRED, result.reason, result.metrics)
            log.info(
                "deferred step %d: %s (%s of %d examples)",
                step,
                result.reason,
                result.metrics.get("examples"),
                self.settings.min_examples,
            )
            return PublishReport(DEFERRED, step, reason=result.reason, gate=result.metrics)
        return self._reject(step, result.reason, result.metrics)

    def _switch_shortfall(self, checkpoint: TrainerCheckpoint) -> str | None:
        """Why `checkpoint`, of another sid_version than the served model's, cannot go out
        yet (its version's index in the delta log is incomplete); None when it can, or when
        it is no switch. A version the log has never seen is the gate's to reject."""
        new = checkpoint.sid_version
        version = self.served_version()
        if not new or version is None or not self.deltas.seq(new):
            return None
        try:
            served = self._manifest(version).sid_version
        except ArtifactError:
            return None
        if served == new:
            return None
        shortfall = switch_shortfall(self.deltas.snapshot(new), self.deltas.lookup(served).sids)
        if shortfall is None:
            log.info("step %d switches sid_version %s -> %s", checkpoint.step, served, new)
        return shortfall

    def _gate(self, checkpoint: TrainerCheckpoint) -> GateResult | None:
        sid_version = checkpoint.sid_version
        lookup = self.deltas.lookup(sid_version) if sid_version else SidLookup("", {})
        candidate = GateModel(
            f"step {checkpoint.step}",
            checkpoint.model_config,
            checkpoint.params,
            Vocab.load(checkpoint.vocab_dir),
            lookup,
            checkpoint.max_prompt_len,
            checkpoint.prompt_layout,
        )
        early = finiteness(candidate, checkpoint.loss)
        if early is not None:  # before any Kafka read: a NaN is rejected even with Kafka down
            return early
        served = self._served_model(lookup)
        try:
            examples = self.inputs.held_out(checkpoint.fresh_offsets, self.cfg.gate_examples)
        except Exception as err:  # noqa: BLE001 - Kafka unreachable or slow: retry next cycle
            log.warning("held-out examples for step %d unreadable: %s", checkpoint.step, err)
            return None
        return gate(candidate, served, examples, self.settings, checkpoint.loss, self._searches)

    def _served_model(self, candidate_lookup: SidLookup) -> GateModel | None:
        version = self.served_version()
        if version is None:
            return None
        if self._served is None or self._served.version != version:
            try:
                artifact = self.repo.load(version)
            except ArtifactError as err:
                log.warning("served version %d unreadable (%s): gating without it", version, err)
                return None
            m = artifact.manifest
            self._served = _ServedModel(
                version,
                m.sid_version,
                ModelConfig.from_dict(m.model_config),
                artifact.params,
                Vocab.load(artifact.vocab_dir),
                m.max_prompt_len,
                m.prompt_layout,
            )
        served = self._served
        lookup = (
            candidate_lookup
            if candidate_lookup.version == served.sid_version
            else self.deltas.lookup(served.sid_version)
        )
        return GateModel(
            f"version {version}",
            served.model_config,
            served.params,
            served.vocab,
            lookup,
            served.max_prompt_len,
            served.prompt_layout,
        )

    def _reject(self, step: int, reason: str, metrics: Mapping[str, Any]) -> PublishReport:
        self.ledger.decide(step, REJECTED, reason, metrics)
        self.metrics.counter("plum_publisher_rejections_total").labels(reason=reason).inc()
        log.warning("rejected step %d: %s", step, reason)
        return PublishReport(REJECTED, step, reason=reason, gate=dict(metrics))

    def _publish(self, checkpoint: TrainerCheckpoint, result: GateResult) -> PublishReport:
        snapshot = self.deltas.snapshot(checkpoint.sid_version)
        manifest = export(
            self.repo,
            checkpoint,
            snapshot,
            dtype=self.cfg.dtype,
            gate={"reason": result.reason, **result.metrics},
        )
        self._manifests[manifest.version] = manifest
        # decision and target in one transaction, BEFORE any push (restart-safe)
        self.ledger.publish(checkpoint.step, manifest.version, result.reason, result.metrics)
        self.metrics.counter("plum_publisher_publishes_total").inc()
        log.info(
            "published version %d (step %d, %s seq %d, %s); it is the target of %d endpoints",
            manifest.version,
            checkpoint.step,
            manifest.sid_version,
            manifest.index_seq,
            result.reason,
            len(self.clients),
        )
        return PublishReport(
            PUBLISHED, checkpoint.step, manifest.version, result.reason, dict(result.metrics)
        )

    # ------------------------------------------------------------------ rollback
    def rollback(self, to: int | None = None) -> dict[str, Any]:
        """Make `to` (default: the version published before the target) the target, mark
        later versions rolled back, and push it to every endpoint."""
        with self._publish_lock:
            before = self.ledger.target()
            version = to if to is not None else self.ledger.previous_version()
            if version is None:
                raise RollbackError(f"no published version before the target {before}")
            try:
                self._manifest(version)
            except ArtifactError as err:
                raise RollbackError(f"cannot roll back to version {version}: {err}") from err
            rolled = self.ledger.rollback(version)
            log.info("rollback: target %s -> %d (rolled back %s)", before, version, rolled)
            self.reconcile()
            return {
                "target": version,
                "previous_target": before,
                "rolled_back": rolled,
                "endpoints": self.endpoint_states(),
            }

    # ------------------------------------------------------------------ pushes
    def endpoint_states(self) -> list[dict[str, Any]]:
        """What each configured endpoint acknowledged (the ledger's rows), as JSON."""
        return [self.ledger.endpoint(url).to_json() for url in self.clients]

    def reconcile(self) -> None:
        """Every endpoint: read its /v1/status; push the target where it differs (then
        confirm); record what it runs; bring its index up to date."""
        target = self.ledger.target()
        manifest = None
        if target is not None:
            try:
                manifest = self._manifest(target)
            except ArtifactError as err:  # the repository lost it: nothing to push
                log.error("target version %d is not in the model repository: %s", target, err)
        for url, client in self.clients.items():
            with self._push_locks[url]:
                if self._reconcile_model(url, client, manifest):
                    self._push_deltas(url, client)
        self._update_gauges()

    def _reconcile_model(self, url: str, client: ServingClient, target: Manifest | None) -> bool:
        """Read the endpoint's /v1/status and push `target` if it runs another version;
        False when it cannot be reached. What it runs is acknowledged before and after a
        push, so after a failed push the ledger still says what it serves (and its deltas
        go on)."""
        reached = False
        try:
            status = client.status()
            reached = True
            self._acknowledge(url, status)
            if target is None or status.model_version == target.version:
                return True
            started = time.monotonic()
            log.info(
                "publishing version %d to %s (it runs %s)",
                target.version,
                url,
                status.model_version,
            )
            status = push_model(client, target.version, target.sid_version)
            self.metrics.histogram("plum_publisher_push_seconds").labels(kind="model").observe(
                time.monotonic() - started
            )
            log.info("%s: version %d confirmed", url, target.version)
            self._acknowledge(url, status)
        except PushError as err:
            self.metrics.counter("plum_publisher_push_failures_total").labels(kind="model").inc()
            log.warning("%s", err)
        return reached

    def delta_cycle(self) -> dict[str, int]:
        """Catch the delta log up from Kafka and push new assignments to every endpoint
        that runs the served version; returns endpoint -> acknowledged seq."""
        self._catch_up()
        for url, client in self.clients.items():
            lock = self._push_locks[url]
            if not lock.acquire(blocking=False):
                continue  # a model push is in flight: its deltas follow it
            try:
                self._push_deltas(url, client)
            finally:
                lock.release()
        self._update_gauges()
        return {
            e.endpoint: e.delta_seq for e in self.ledger.endpoints() if e.endpoint in self.clients
        }

    def _catch_up(self) -> bool:
        """Read new SID assignments into the delta log; False when Kafka failed (logged:
        the caller goes on with what the log has)."""
        with self._catch_up_lock:  # both jobs catch up; one read at a time suffices
            try:
                self.inputs.catch_up(self.deltas)
            except Exception as err:  # noqa: BLE001 - Kafka down: push what the log has
                log.warning("SID assignments not caught up: %s", err)
                return False
        return True

    def _acknowledge(self, url: str, status: ServingStatus) -> None:
        self.ledger.acknowledge(
            url,
            model_version=status.model_version,
            sid_version=status.index_sid_version,
            delta_seq=status.index_seq,
        )

    def _push_deltas(self, url: str, client: ServingClient) -> None:
        """The assignments the endpoint's index lacks, from its acknowledged seq, for the
        sid_version its index has (= its model's: serving keeps the two together). The
        target does not matter here: an endpoint still on an older model of the same
        sid_version keeps getting new SIDs while its model push fails, and an index of
        another sid_version than the target's is switched by the model push, never by a
        delta."""
        state = self.ledger.endpoint(url)
        sid_version = state.sid_version
        if state.model_version is None or sid_version is None:
            return  # nothing confirmed yet: reconcile reads its status first
        acked = state.delta_seq
        last = self.deltas.seq(sid_version)
        if acked >= last:
            return
        started = time.monotonic()
        try:
            push_deltas(
                client,
                lambda from_seq, n: self.deltas.delta(sid_version, from_seq, n),
                sid_version,
                acked,
                last,
                on_ack=lambda seq: self.ledger.acknowledge_deltas(url, sid_version, seq),
            )
        except PushError as err:
            self.metrics.counter("plum_publisher_push_failures_total").labels(kind="delta").inc()
            log.warning("%s", err)
            # e.g. its index switched sid_version behind our back (an operator's rollback,
            # another publisher): follow what it now runs, so the next cycle sends that
            # version's deltas instead of failing on the old one until the next publish
            try:
                self._acknowledge(url, client.status())
            except PushError:
                pass
            return
        self.metrics.histogram("plum_publisher_push_seconds").labels(kind="delta").observe(
            time.monotonic() - started
        )

    def _manifest(self, version: int) -> Manifest:
        if version not in self._manifests:
            self._manifests[version] = self.repo.manifest(version)
        return self._manifests[version]

    def _update_gauges(self) -> None:
        version = self.served_version()
        states = [e for e in self.ledger.endpoints() if e.endpoint in self.clients]
        for e in states:
            self.metrics.gauge("plum_publisher_delta_seq").labels(endpoint=e.endpoint).set(
                e.delta_seq
            )
        if version is None:
            return
        try:
            manifest = self._manifest(version)
        except ArtifactError:
            return
        age_s = self._clock() - manifest.created_at_ms / 1000.0
        self.metrics.gauge("plum_publisher_served_model_age_seconds").set(max(0.0, age_s))
        newest = self.deltas.seq(manifest.sid_version)
        acked = [e.delta_seq if e.sid_version == manifest.sid_version else 0 for e in states] or [0]
        pending = max(0, newest - min(acked)) if len(states) == len(self.clients) else newest
        self.metrics.gauge("plum_publisher_assignments_pending").set(pending)


def publisher_runtime(publisher: Publisher, stop: threading.Event | None = None) -> Runtime:
    """The runtime `plum publish run` runs: /metrics on cfg.metrics_port (-1 = none, 0 = a
    free port), a progress line every log_every_s, SIGTERM/SIGINT -> exit 0."""
    cfg = publisher.cfg
    return Runtime(
        publisher,
        RuntimeConfig(
            name="publisher",
            unit="cycles",
            metrics_port=cfg.metrics_port,
            progress_every_s=cfg.log_every_s,
        ),
        registry=publisher.metrics.registry,
        stop=stop,
    )
