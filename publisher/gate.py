"""The gate: may this checkpoint replace what serving runs?

In order, cheapest first:

1. Finite parameters, and a finite loss when the checkpoint records one. A NaN model is
   rejected before anything else is spent on it (and ModelRepository.write would refuse
   it anyway; it is never exported nor pushed).
2. The candidate's SID version has videos its vocabulary can write (else it could not
   name a single one).
3. Recall@k of the candidate AND of the served model on the SAME freshest held-out
   examples, measured in this run: a number measured on another day's data is no
   reference for today's. The candidate fails when it trails the served model by more
   than `margin`. Only examples whose target both models can name are scored.
4. Too few scorable examples: the decision is deferred (retried next cycle, when more
   data has arrived), unless nothing is served yet, where a finite model beats no model.

Reasons are short stable strings: they label plum_publisher_rejections_total.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.artifact import non_finite_leaves
from streams.contracts.schema import SftExample, ValidationError, decode_sft_example
from trainer.beam import BeamSearch
from trainer.config import ModelConfig
from trainer.eval import ModelRanker, candidate_ids, recall_at_k
from trainer.prompt import SidLookup
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

Outcome = Literal["pass", "reject", "defer"]
PASS: Outcome = "pass"
REJECT: Outcome = "reject"
DEFER: Outcome = "defer"

# rejections (metric labels)
NON_FINITE_PARAMS = "non_finite_params"
NON_FINITE_LOSS = "non_finite_loss"
RECALL_REGRESSED = "recall_regressed"
SID_VERSION_UNKNOWN = "sid_version_unknown"
# deferral
TOO_FEW_EXAMPLES = "too_few_examples"
# passes
RECALL_WITHIN_MARGIN = "recall_within_margin"
NO_SERVED_MODEL = "no_served_model"
NO_SERVED_MODEL_FEW_EXAMPLES = "no_served_model_few_examples"

REJECTIONS = (NON_FINITE_PARAMS, NON_FINITE_LOSS, RECALL_REGRESSED, SID_VERSION_UNKNOWN)
RANKER_BATCH = 32  # beam-search batch: one compile per ranker, however many examples
HELD_OUT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class GateSettings:
    """The [publisher] gate_* settings (publisher/config.py)."""

    k: int = 10
    margin: float = 0.02
    beams: int = 10
    min_examples: int = 32

    def __post_init__(self) -> None:
        if self.k < 1 or self.beams < self.k:
            raise ValueError(f"need 1 <= k={self.k} <= beams={self.beams}")
        if self.min_examples < 1:
            raise ValueError(f"min_examples={self.min_examples} must be >= 1")


@dataclass(frozen=True)
class GateModel:
    """One side of the comparison: everything needed to rank with it."""

    name: str  # "step 1200" / "version 3", for logs and the metrics
    model_config: ModelConfig
    params: Any
    vocab: Vocab
    lookup: SidLookup  # its sid_version, as the delta log has it now
    max_prompt_len: int
    prompt_layout: str = "target"  # the layout it was trained in (trainer.prompt)


@dataclass(frozen=True)
class GateResult:
    outcome: Outcome
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == PASS


def gate(
    candidate: GateModel,
    served: GateModel | None,
    examples: Sequence[SftExample],
    settings: GateSettings,
    loss: float | None = None,
    searches: SearchCache | None = None,
) -> GateResult:
    """Decide on `candidate` against `served` (None: nothing served) on `examples` (the
    freshest held-out slice, already cut to the configured size). See the module
    docstring for the order of the checks. `searches` keeps compiled beam searches for
    the next call (a long-running publisher passes the same one every cycle)."""
    searches = searches or SearchCache()
    started = time.monotonic()
    metrics: dict[str, Any] = {
        "k": settings.k,
        "margin": settings.margin,
        "candidate": candidate.name,
        "served": served.name if served is not None else None,
        "examples_read": len(examples),
    }

    def done(outcome: Outcome, reason: str) -> GateResult:
        metrics["seconds"] = round(time.monotonic() - started, 3)
        return GateResult(outcome, reason, metrics)

    early = finiteness(candidate, loss)
    if early is not None:
        metrics.update(early.metrics)
        return done(early.outcome, early.reason)
    if loss is not None:
        metrics["loss"] = loss
    nameable = candidate_ids(candidate.lookup, candidate.vocab)
    metrics["sid_version"] = candidate.lookup.version
    if not nameable:
        return done(REJECT, SID_VERSION_UNKNOWN)
    if served is not None:
        nameable = nameable & candidate_ids(served.lookup, served.vocab)
    scored = [e for e in examples if e.target_video_id in nameable]
    metrics["examples"] = len(scored)
    metrics["skipped_no_sid"] = len(examples) - len(scored)
    few = len(scored) < settings.min_examples
    if few and served is not None:
        return done(DEFER, TOO_FEW_EXAMPLES)
    if scored:
        metrics["recall_candidate"] = _recall(candidate, scored, settings, searches)
    if served is None:
        return done(PASS, NO_SERVED_MODEL_FEW_EXAMPLES if few else NO_SERVED_MODEL)
    metrics["recall_served"] = _recall(served, scored, settings, searches)
    if metrics["recall_candidate"] < metrics["recall_served"] - settings.margin:
        return done(REJECT, RECALL_REGRESSED)
    return done(PASS, RECALL_WITHIN_MARGIN)


def finiteness(candidate: GateModel, loss: float | None = None) -> GateResult | None:
    """The rejection for non-finite parameters or loss, else None. Cheap, so the
    publisher runs it before reading any held-out data."""
    bad = non_finite_leaves(candidate.params)
    if bad:
        return GateResult(REJECT, NON_FINITE_PARAMS, {"non_finite_arrays": bad})
    if loss is not None and not math.isfinite(loss):
        return GateResult(REJECT, NON_FINITE_LOSS, {"loss": str(loss)})  # JSON has no NaN
    return None


class SearchCache:
    """Compiled beam searches, shared by the gate's rankers across models and cycles.

    A search depends on the model config, the SID slot layout and the beam width, not on
    the parameters or the index (both are arguments), so the candidate, the served model
    and every later cycle's models reuse one compiled search instead of compiling two per
    gate run (seconds each on CPU). Rankers use one fixed batch size for the same reason.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._searches: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def ranker(self, model: GateModel, beams: int) -> ModelRanker:
        vocab = model.vocab
        key = (model.model_config, vocab.sid_slot_offsets, vocab.sid_slot_sizes, beams)
        with self._lock:
            if key not in self._searches:
                while len(self._searches) >= self.max_entries:
                    self._searches.pop(next(iter(self._searches)))  # the oldest
                self._searches[key] = BeamSearch.for_vocab(model.model_config, vocab, beams)
            search = self._searches[key]
        return ModelRanker(
            model.model_config,
            model.params,
            vocab,
            model.lookup,
            beams=beams,
            max_prompt_len=model.max_prompt_len,
            layout=model.prompt_layout,
            batch_size=RANKER_BATCH,
            search=search,
        )


def _recall(
    model: GateModel,
    examples: Sequence[SftExample],
    settings: GateSettings,
    searches: SearchCache,
) -> float:
    ranker = searches.ranker(model, settings.beams)
    ranked = ranker.rank_many(examples, settings.k)
    recall = recall_at_k(ranked, [e.target_video_id for e in examples], settings.k)
    log.info(
        "gate: %s Recall@%d = %.4f on %d examples", model.name, settings.k, recall, len(examples)
    )
    return recall


def held_out_examples(
    bootstrap: str,
    topic: str,
    start: Mapping[int, int],
    n: int,
    timeout_s: float = HELD_OUT_TIMEOUT_S,
) -> list[SftExample]:
    """The newest `n` examples (by event time) of the SFT-examples `topic` at or after
    `start` (partition -> offset: a checkpoint's position, so none of them was trained on
    by it or by any older checkpoint), oldest first. Malformed records are skipped.

    Only the tail is read: a partition is read from max(start, end - 2n) (2n: offsets
    also count transaction markers), so a trainer far behind the topic costs no more
    than one that keeps up.
    """
    from streams.kafka.reader import TopicReader
    from streams.kafka.source import TopicEnds

    begin = {int(p): int(o) for p, o in start.items()}
    if begin:
        ends = TopicEnds(bootstrap, topic, client_id="plum-publisher-gate-ends")
        try:
            end = ends(sorted(begin), timeout_s=min(timeout_s, 10.0))
        finally:
            ends.close()
        begin = {p: max(o, end.get(p, o) - 2 * n) for p, o in begin.items()}
    newest: list[tuple[int, int, int, SftExample]] = []  # min-heap of (ts, partition, offset)
    malformed = 0
    with TopicReader(bootstrap, topic, begin, timeout_s, client_id="plum-publisher-gate") as reader:
        for batch in reader:
            for rec in batch:
                try:
                    example = decode_sft_example(rec.value or b"")
                except ValidationError:
                    malformed += 1
                    continue
                item = (example.ts, rec.partition, rec.offset, example)
                if len(newest) < n:
                    heapq.heappush(newest, item)
                elif item[:3] > newest[0][:3]:
                    heapq.heapreplace(newest, item)
    if malformed:
        log.warning("gate: %d malformed records in %s skipped", malformed, topic)
    return [item[3] for item in sorted(newest, key=lambda i: i[:3])]
