"""Retrieval evaluation: Recall@K / NDCG@K of the model against baselines on held-out data.

    cands = candidate_ids(lookup, vocab)
    train, fresh = fresh_split(examples, holdout_fraction=0.1)
    rankers = {**fit_baselines(train, cands), "model": ModelRanker(cfg, params, vocab, lookup)}
    report = evaluate(rankers, fresh, candidates=cands)

Fairness rules, so a baseline number means something next to the model's:

- Baselines are fitted on TRAINING examples only, never on the slice they are scored on,
  and in the same run as the model (a baseline measured once on another day is no
  reference for a model trained on today's stream).
- Every ranker ranks the same candidate set: the videos with a SID in the evaluated index
  version (`candidate_ids`). The constrained model cannot name any other video, so a
  baseline allowed to would be playing a different game.
- An example whose target has no SID in that version cannot be hit by the model; it is
  skipped for every ranker and counted (`num_skipped_no_sid`), never dropped silently.
- Nothing is excluded from a ranking because the user already watched it: targets can be
  re-watches, and the model does not exclude them either. (On MovieLens, where nobody
  rates a film twice, this handicaps popularity most: its top films are mostly already
  rated by the user. The handicap is the same for every ranker.)

Metrics (one relevant item per query, the target):

    Recall@K = share of queries whose target is in the top K   (= hit rate)
    NDCG@K   = mean of 1 / log2(rank + 2) over queries whose target has 0-based rank < K

Splits: `fresh_split` (by event time: the newest fraction is held out, the next-day style
the publisher's gate uses) and `leave_last_out` (RecBole's per-user leave-one-out, for
comparing with published MovieLens numbers; not time-consistent across users).
`scoring_split` picks, for either protocol, the slice a run is scored on: the held-out
one ("fresh"), or a validation slice carved from the training data ("validation") for
choosing settings without ever looking at the held-out slice.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from plum.runtime import Progress
from streams.contracts.schema import SftExample
from trainer.beam import BeamSearch, left_pad, trie_from_sids
from trainer.config import ModelConfig
from trainer.prompt import HOUR_MS, PROMPT_LAYOUTS, SidLookup, prompt_for
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_NDCG_KS: tuple[int, ...] = (10,)


# ---------------------------------------------------------------------------- metrics


def _check_queries(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> None:
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} targets")


def _rank_of(ranking: Sequence[str], target: str, k: int) -> int | None:
    """0-based rank of target in the top k (first occurrence), None when absent."""
    for i, video in enumerate(ranking[:k]):
        if video == target:
            return i
    return None


def recall_at_k(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Share of queries whose single target is in the top k (hit rate); 0.0 for no queries."""
    _check_queries(ranked, targets, k)
    if not targets:
        return 0.0
    hits = sum(_rank_of(r, t, k) is not None for r, t in zip(ranked, targets, strict=True))
    return hits / len(targets)


def ndcg_at_k(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Mean NDCG@k with one relevant item: 1 / log2(rank + 2) (rank 0-based, ideal DCG = 1)."""
    _check_queries(ranked, targets, k)
    if not targets:
        return 0.0
    total = 0.0
    for r, t in zip(ranked, targets, strict=True):
        rank = _rank_of(r, t, k)
        if rank is not None:
            total += 1.0 / math.log2(rank + 2)
    return total / len(targets)


# ---------------------------------------------------------------------------- rankers


@runtime_checkable
class Ranker(Protocol):
    """Anything that ranks candidate video ids for a batch of examples, best first."""

    def rank_many(self, examples: Sequence[SftExample], k: int) -> list[list[str]]: ...


class Generation(NamedTuple):
    """What a SID-generating ranker produced for a batch: rankings plus hallucination counts."""

    ranked: list[list[str]]  # per example, video ids best first (only SIDs of the index)
    generated: int  # SIDs generated (beams with a finite score)
    invalid: int  # of which name no video of the index

    @property
    def hallucination_rate(self) -> float:
        return self.invalid / self.generated if self.generated else 0.0


@runtime_checkable
class SidGenerator(Protocol):
    """A ranker that generates SIDs (the model): evaluate() also reports its hallucination."""

    def generate(self, examples: Sequence[SftExample]) -> Generation: ...


def candidate_ids(lookup: SidLookup, vocab: Vocab) -> frozenset[str]:
    """Videos with a SID in `lookup` that `vocab` can write: exactly what the model can name."""
    return frozenset(v for v in lookup.sids if lookup.tokens(vocab, v) is not None)


_DIGITS = re.compile(r"(\d+)")


def natural_id_key(video_id: str) -> tuple:
    """Video ids with their numbers compared as numbers: "ml100k-m2" < "ml100k-m10", so a
    tie broken by this key goes to the smaller MovieLens item id, as the standard protocol
    breaks popularity ties."""
    parts = _DIGITS.split(video_id)
    return tuple((0, int(p), "") if i % 2 else (1, 0, p) for i, p in enumerate(parts))


@dataclass(frozen=True)
class PopularityBaseline:
    """The same list for every query: candidates by how often they were a training target
    (`fit`) or a training interaction (`fit_interactions`: every training watch, history
    included, the standard MovieLens protocol's popularity).

    Ties (including never-seen candidates, count 0, which fill the tail so a ranking is
    never shorter than the candidate set allows) are broken by video id with numbers
    compared as numbers (`natural_id_key`: the smaller item id wins), so the order is a
    pure function of the training data and the candidate set.
    """

    order: tuple[str, ...]  # every candidate, most popular first
    counts: Mapping[str, int] = field(repr=False)

    @classmethod
    def fit(
        cls, examples: Iterable[SftExample], candidates: Collection[str] | None = None
    ) -> PopularityBaseline:
        """candidates=None: every video seen as a target (no restriction)."""
        return cls.fit_interactions((e.target_video_id for e in examples), candidates)

    @classmethod
    def fit_interactions(
        cls, videos: Iterable[str], candidates: Collection[str] | None = None
    ) -> PopularityBaseline:
        """Counts of `videos` (one entry per training interaction); candidates=None: every
        video counted."""
        counts = Counter(videos)
        pool = set(counts) if candidates is None else set(candidates)
        restricted = {v: counts.get(v, 0) for v in pool}
        order = tuple(sorted(restricted, key=lambda v: (-restricted[v], natural_id_key(v))))
        return cls(order, restricted)

    def rank(self, example: SftExample, k: int) -> list[str]:
        return list(self.order[:k])

    def rank_many(self, examples: Sequence[SftExample], k: int) -> list[list[str]]:
        top = list(self.order[:k])
        return [list(top) for _ in examples]


def _watch_sequences(examples: Iterable[SftExample]) -> dict[str, list[str]]:
    """Each user's watches, rebuilt from the examples: history items (at target ts minus
    hours_since) and targets, deduplicated by (ts ms, video) and sorted by time.

    Consecutive examples of a user share most of their history; counting pairs per
    example would count one real transition up to history_len times, so pairs are
    counted over this rebuilt sequence instead, each real pair of watches once.
    """
    events: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for e in examples:
        seen = events[e.user_id]
        seen.add((e.ts, e.target_video_id))
        for h in e.history:
            seen.add((e.ts - round(h.hours_since * HOUR_MS), h.video_id))
    return {u: [v for _, v in sorted(evs)] for u, evs in events.items()}


@dataclass(frozen=True)
class CooccurrenceBaseline:
    """Item-to-item co-occurrence ("people who watched X also watched Y"), filled with
    popularity.

    fit counts, from training examples only, symmetric pairs of different videos
      - watched within `window` positions of each other in a user's watch sequence
        (rebuilt from history + targets, see `_watch_sequences`): this covers
        (history item, target) for the `window` most recent history items and
        consecutive history items, each real pair once;
      - (context video, target) of every example.
    rank scores each candidate c by

        score(c) = context_weight * co[context, c] + sum_j decay**j * co[h_j, c]

    over the `window` most recent history items h_0 (newest), h_1, ...: recent watches
    say more about the next one. Raw counts (no normalisation), so popular neighbours
    win, as in the simplest item-based CF. Ties go to the more popular candidate, then
    video id; candidates with no co-occurrence fill the tail in popularity order.
    """

    popularity: PopularityBaseline
    window: int
    decay: float
    context_weight: float
    # CSR over source videos (rows) x candidates (columns, in popularity order)
    rows: Mapping[str, int] = field(repr=False)
    indptr: np.ndarray = field(repr=False)
    indices: np.ndarray = field(repr=False)
    data: np.ndarray = field(repr=False)
    columns: Mapping[str, int] = field(repr=False)  # candidate -> column = popularity rank

    @classmethod
    def fit(
        cls,
        examples: Sequence[SftExample],
        window: int = 5,
        candidates: Collection[str] | None = None,
        decay: float = 0.5,
        context_weight: float = 1.0,
        popularity: PopularityBaseline | None = None,
    ) -> CooccurrenceBaseline:
        """`popularity`: the order that breaks ties and fills the tail (default: training
        targets' popularity over `candidates`)."""
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        if not 0.0 < decay <= 1.0 or context_weight < 0:
            raise ValueError(f"decay={decay} must be in (0, 1], context_weight >= 0")
        if popularity is None:
            popularity = PopularityBaseline.fit(examples, candidates)
        col = {v: i for i, v in enumerate(popularity.order)}
        pairs: Counter[tuple[str, str]] = Counter()
        for seq in _watch_sequences(examples).values():
            for i, a in enumerate(seq):
                for b in seq[i + 1 : i + 1 + window]:
                    if a != b:
                        pairs[a, b] += 1
                        pairs[b, a] += 1
        for e in examples:
            ctx = e.context_video_id
            if ctx is not None and ctx != e.target_video_id:
                pairs[ctx, e.target_video_id] += 1
                pairs[e.target_video_id, ctx] += 1
        by_row: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for (a, b), n in pairs.items():
            if b in col:
                by_row[a].append((col[b], n))
        rows = {v: i for i, v in enumerate(sorted(by_row))}
        indptr = np.zeros(len(rows) + 1, np.int64)
        indices: list[int] = []
        data: list[int] = []
        for v, r in rows.items():
            cells = sorted(by_row[v])
            indices += [c for c, _ in cells]
            data += [n for _, n in cells]
            indptr[r + 1] = len(indices)
        log.info(
            "co-occurrence baseline: %d examples, %d source videos, %d pairs, %d candidates",
            len(examples),
            len(rows),
            len(indices),
            len(col),
        )
        return cls(
            popularity,
            window,
            decay,
            context_weight,
            rows,
            indptr,
            np.asarray(indices, np.int64),
            np.asarray(data, np.float64),
            col,
        )

    def co_count(self, a: str, b: str) -> int:
        """How often a and b (a candidate) co-occurred in the training examples."""
        r = self.rows.get(a)
        c = self.popularity_rank(b)
        if r is None or c is None:
            return 0
        s, e = self.indptr[r], self.indptr[r + 1]
        hit = np.searchsorted(self.indices[s:e], c)
        return int(self.data[s + hit]) if hit < e - s and self.indices[s + hit] == c else 0

    def popularity_rank(self, video: str) -> int | None:
        """0-based position of a candidate in the popularity order (None: not a candidate)."""
        return self.columns.get(video)

    def _sources(self, example: SftExample) -> list[tuple[str, float]]:
        recent = [h.video_id for h in reversed(example.history[-self.window :])]
        out = [(v, self.decay**j) for j, v in enumerate(recent)]
        if example.context_video_id is not None and self.context_weight > 0:
            out.append((example.context_video_id, self.context_weight))
        return out

    def rank(self, example: SftExample, k: int) -> list[str]:
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for video, weight in self._sources(example):
            r = self.rows.get(video)
            if r is not None:
                s, e = self.indptr[r], self.indptr[r + 1]
                cols.append(self.indices[s:e])
                vals.append(self.data[s:e] * weight)
        order = self.popularity.order
        ranked: list[str] = []
        if cols:
            uniq, inverse = np.unique(np.concatenate(cols), return_inverse=True)
            scores = np.bincount(inverse, weights=np.concatenate(vals))
            # columns are in popularity order, so the column index breaks ties by popularity
            best = np.lexsort((uniq, -scores))[:k]
            ranked = [order[int(c)] for c in uniq[best]]
        if len(ranked) < k:
            chosen = set(ranked)
            for video in order:
                if len(ranked) >= k:
                    break
                if video not in chosen:
                    ranked.append(video)
        return ranked

    def rank_many(self, examples: Sequence[SftExample], k: int) -> list[list[str]]:
        return [self.rank(e, k) for e in examples]


def fit_baselines(
    train: Sequence[SftExample],
    candidates: Collection[str],
    window: int = 5,
    interactions: Iterable[str] | None = None,
) -> dict[str, Ranker]:
    """The baselines every evaluation reports next to the model, fitted on `train`.

    `interactions`: the video of every training interaction (the standard MovieLens
    protocol counts popularity over all of them, not only over example targets); both
    baselines then share that popularity order."""
    popularity = (
        PopularityBaseline.fit(train, candidates)
        if interactions is None
        else PopularityBaseline.fit_interactions(interactions, candidates)
    )
    return {
        "popularity": popularity,
        "cooccurrence": CooccurrenceBaseline.fit(train, window, candidates, popularity=popularity),
    }


class ModelRanker:
    """The model's top-`beams` videos: beam search over SID tokens after the SFT prompt.

    The trie holds every video of `lookup` the vocabulary can write (item order = sorted
    video ids), so a constrained search names only candidates. constrained=False lets
    the search generate any well-formed SID: its rankings keep only the SIDs that name a
    video (fewer than `beams` when it hallucinates) and `generate` counts the rest.

    Every batch has the same shape, [batch_size, max_prompt_len] (prompts left-padded,
    the last batch filled with dummy one-token prompts whose results are dropped), so the
    search compiles once per ranker.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        params: Any,
        vocab: Vocab,
        lookup: SidLookup,
        beams: int = 10,
        max_prompt_len: int = 64,
        batch_size: int = 32,
        constrained: bool = True,
        search: BeamSearch | None = None,
        layout: str = "target",
    ) -> None:
        """`search`: a compiled search to reuse (its jit cache is per model config, slot
        layout and beam width, not per parameters), e.g. across the models a gate compares.
        `layout`: the prompt layout the model was trained on (trainer.prompt.prompt_for)."""
        if layout not in PROMPT_LAYOUTS:
            raise ValueError(f"layout={layout!r} must be one of {PROMPT_LAYOUTS}")
        self.layout = layout
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if max_prompt_len + vocab.num_sid_slots - 1 > model_config.max_len:
            raise ValueError(
                f"max_prompt_len={max_prompt_len} + {vocab.num_sid_slots} SID tokens exceeds "
                f"the model's max_len={model_config.max_len}"
            )
        self.params = params
        self.vocab = vocab
        self.lookup = lookup
        self.beams = beams
        self.max_prompt_len = max_prompt_len
        self.batch_size = batch_size
        self.constrained = constrained
        self.video_ids: tuple[str, ...] = tuple(sorted(candidate_ids(lookup, vocab)))
        if not self.video_ids:
            raise ValueError(
                f"SID index version {lookup.version!r} has no video the vocab can write"
            )
        _check_unique_sids(vocab, lookup, self.video_ids)
        self.trie = trie_from_sids(vocab, [lookup.sids[v] for v in self.video_ids])
        if search is None:
            search = BeamSearch.for_vocab(model_config, vocab, beams, constrained)
        elif (search.config, search.beams, search.constrained) != (
            model_config,
            beams,
            constrained,
        ) or search.slot_sizes != tuple(vocab.sid_slot_sizes):
            raise ValueError("the given search was built for another model, width or SID layout")
        self.search = search

    def prompts(self, examples: Sequence[SftExample]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompts [len(examples), max_prompt_len] and their masks."""
        seqs = [
            prompt_for(e, self.lookup, self.vocab, self.max_prompt_len, self.layout)
            for e in examples
        ]
        return left_pad(seqs, self.vocab.pad_id, self.max_prompt_len)

    def generate(self, examples: Sequence[SftExample]) -> Generation:
        ranked: list[list[str]] = []
        generated = invalid = 0
        n, bs = len(examples), self.batch_size
        progress = Progress("beam search", "examples", total=n, logger=log)
        for start in range(0, n, bs):
            chunk = examples[start : start + bs]
            tokens, mask = self.prompts(chunk)
            if len(chunk) < bs:  # dummy rows keep the compiled batch shape
                dummy_tokens, dummy_mask = left_pad(
                    [[self.vocab.bos_id]] * (bs - len(chunk)),
                    self.vocab.pad_id,
                    self.max_prompt_len,
                )
                tokens = np.concatenate([tokens, dummy_tokens])
                mask = np.concatenate([mask, dummy_mask])
            result = self.search(self.params, tokens, mask, self.trie)
            items = np.asarray(result.item)[: len(chunk)]  # [chunk, beams], best first
            found = np.isfinite(np.asarray(result.scores))[: len(chunk)]
            generated += int(found.sum())
            invalid += int((found & (items < 0)).sum())
            ranked += [[self.video_ids[i] for i in row if i >= 0] for row in items]
            progress.add(len(chunk))
            progress.maybe_report()
        progress.close()
        return Generation(ranked, generated, invalid)

    def rank_many(self, examples: Sequence[SftExample], k: int) -> list[list[str]]:
        return [r[:k] for r in self.generate(examples).ranked]

    def rank(self, example: SftExample, k: int) -> list[str]:
        return self.rank_many([example], k)[0]

    def hallucination_rate(self, examples: Sequence[SftExample]) -> float:
        """Share of generated SIDs naming no video of the index (0 when constrained)."""
        return self.generate(examples).hallucination_rate


def _check_unique_sids(vocab: Vocab, lookup: SidLookup, video_ids: Sequence[str]) -> None:
    """A SID shared by two videos would make the trie ambiguous; name them."""
    owner: dict[tuple[int, ...], str] = {}
    for v in video_ids:
        slots = vocab.sid_slots(lookup.sids[v])
        if slots in owner:
            raise ValueError(
                f"videos {owner[slots]!r} and {v!r} share SID {tuple(lookup.sids[v])} "
                f"in version {lookup.version!r}"
            )
        owner[slots] = v


# ---------------------------------------------------------------------------- evaluate


def evaluate(
    rankers: Mapping[str, Ranker],
    examples: Sequence[SftExample],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    candidates: Collection[str],
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
) -> dict[str, Any]:
    """Recall@k for k in ks and NDCG@k for k in ndcg_ks of every ranker on the same examples.

    Examples whose target is not in `candidates` (no SID in the evaluated version) are
    skipped for every ranker and counted. Returns a JSON-ready dict:

        {"num_examples", "num_skipped_no_sid",
         "rankers": {name: {"recall@1", ..., "ndcg@10", "seconds"[, "hallucination_rate"]}}}
    """
    if not ks and not ndcg_ks:
        raise ValueError("no k to evaluate")
    cands = candidates if isinstance(candidates, (set, frozenset)) else set(candidates)
    kept = [e for e in examples if e.target_video_id in cands]
    skipped = len(examples) - len(kept)
    if skipped:
        log.info("evaluate: %d of %d examples skipped, target has no SID", skipped, len(examples))
    targets = [e.target_video_id for e in kept]
    k_max = max([*ks, *ndcg_ks])
    report: dict[str, Any] = {
        "num_examples": len(kept),
        "num_skipped_no_sid": skipped,
        "rankers": {},
    }
    for name, ranker in rankers.items():
        started = time.monotonic()
        entry: dict[str, float] = {}
        if isinstance(ranker, SidGenerator):
            gen = ranker.generate(kept)
            ranked = [r[:k_max] for r in gen.ranked]
            entry["hallucination_rate"] = gen.hallucination_rate
        else:
            ranked = ranker.rank_many(kept, k_max)
        if len(ranked) != len(kept):
            raise ValueError(f"ranker {name!r} returned {len(ranked)} rankings for {len(kept)}")
        longest = max((len(r) for r in ranked), default=k_max)
        if kept and longest < k_max:
            log.warning("ranker %r ranks at most %d < k=%d videos", name, longest, k_max)
        for k in ks:
            entry[f"recall@{k}"] = recall_at_k(ranked, targets, k)
        for k in ndcg_ks:
            entry[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
        entry["seconds"] = time.monotonic() - started
        report["rankers"][name] = entry
        log.info("evaluate %s: %s", name, {k: round(v, 4) for k, v in entry.items()})
    return report


# ---------------------------------------------------------------------------- splits


def _by_time(examples: Iterable[SftExample]) -> list[SftExample]:
    """Stable sort by event time: examples of equal ts keep their input (stream) order,
    which is the order their histories were built in."""
    return sorted(examples, key=lambda e: e.ts)


def fresh_split(
    examples: Sequence[SftExample], holdout_fraction: float
) -> tuple[list[SftExample], list[SftExample]]:
    """(train, fresh): the newest ~holdout_fraction of examples by event time is held out.

    The cut is a time T: train has ts < T, fresh ts >= T, so every fresh example is
    strictly newer than every training one even when several share the cut's ts (they
    all go to fresh, which can then be a little larger than the fraction asks).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
    ordered = _by_time(examples)
    if not ordered:
        return [], []
    n_fresh = min(len(ordered), max(1, round(len(ordered) * holdout_fraction)))
    cut_ts = ordered[len(ordered) - n_fresh].ts
    train = [e for e in ordered if e.ts < cut_ts]
    fresh = [e for e in ordered if e.ts >= cut_ts]
    if not train:
        log.warning(
            "fresh_split: every example is at or after the cut ts %d: no training data", cut_ts
        )
    return train, fresh


def leave_last_out(
    examples: Sequence[SftExample],
) -> tuple[list[SftExample], list[SftExample], list[SftExample]]:
    """(train, validation, test) as RecBole's leave-one-out: per user (ordered by ts),
    the latest example is test and the second latest validation; a user always keeps at
    least one training example (2 examples: train + test; 1: train only).

    Each list is in time order. Not time-consistent across users: one user's training
    example can be newer than another's test example (fresh_split avoids that).
    """
    per_user: dict[str, list[SftExample]] = defaultdict(list)
    for e in _by_time(examples):
        per_user[e.user_id].append(e)
    train: list[SftExample] = []
    valid: list[SftExample] = []
    test: list[SftExample] = []
    for seq in per_user.values():
        held = min(2, len(seq) - 1)
        train += seq[: len(seq) - held]
        if held == 2:
            valid.append(seq[-2])
        if held >= 1:
            test.append(seq[-1])
    return _by_time(train), _by_time(valid), _by_time(test)


SCORE_ON = ("fresh", "validation")
PROTOCOLS = ("fresh_split", "leave_last_out")


def scoring_split(
    examples: Sequence[SftExample],
    protocol: str,
    on: str = "fresh",
    holdout_fraction: float = 0.1,
) -> tuple[list[SftExample], list[SftExample]]:
    """(train, scored) under `protocol`, scored on the held-out slice or on validation.

    fresh_split:     on="fresh": the newest `holdout_fraction` by event time;
                     on="validation": the newest `holdout_fraction` of the training part,
                     which is then all that is trained on.
    leave_last_out:  on="fresh": each user's last example (test);
                     on="validation": each user's second to last. Training is the rest
                     either way (never the test example), as RecBole does.
    """
    if on not in SCORE_ON:
        raise ValueError(f"score on {on!r}: must be one of {SCORE_ON}")
    if protocol == "fresh_split":
        train, fresh = fresh_split(examples, holdout_fraction)
        return fresh_split(train, holdout_fraction) if on == "validation" else (train, fresh)
    if protocol == "leave_last_out":
        train, valid, test = leave_last_out(examples)
        return train, valid if on == "validation" else test
    raise ValueError(f"protocol {protocol!r}: must be one of {PROTOCOLS}")


def evenly_spaced(examples: Sequence[SftExample], n: int) -> list[SftExample]:
    """At most `n` of `examples`, evenly spaced over the (time-ordered) list: every period
    stays represented, and the choice is deterministic."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    if len(examples) <= n:
        return list(examples)
    idx = np.linspace(0, len(examples) - 1, n).round().astype(int)
    return [examples[i] for i in idx]
