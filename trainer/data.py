"""The continuous SFT trainer's input: fresh examples from Kafka mixed with archived history.

    data = TrainingData(cfg, vocab, index_lookup_source(index_path), bootstrap, topic,
                        archive_dir, start=restored_position)
    while True:
        mb = data.next_batch(timeout_s=1.0)       # MixedBatch | None
        if mb is None: continue
        if mb.n_rows: state = train_step(state, mb.batch)   # zero-row batches only move
        archive.append(mb.fresh_records)                     #   the position
        position = mb.position                               # saved with checkpoint

A background thread builds batches ahead into a bounded queue (`prefetch_batches`). Each
batch takes up to `n_fresh` fresh examples (trainer/fresh.py, waiting at most
`fresh_wait_ms`) and fills the other rows with history draws (trainer/archive.py); rows
left over are zero-weight padding so the shape is always [batch_size, seq_len]. Examples
carry video ids; they are tokenized when a batch is built, under the SID version the
lookup source returns then (re-read every `sid_refresh_s`).

Exactness (the reason `MixedBatch.position` exists): the position carried by a batch is
the data position right AFTER it — for every partition, the offset of the next record not
in this or an earlier batch (aborted records and transaction markers skipped over count as
read), and the number of history draws so far. A checkpoint that stores the position of
the last batch it trained on resumes with the first record it has not trained on, however
many batches were prefetched and lost in a crash. Offsets live only in the checkpoint:
the consumer has no group and commits nothing to Kafka.

A batch is emitted whenever it has rows or the position moved (records that were
malformed, had no SID for their target, or only markers were skipped). So a batch may
have no rows at all (`n_rows == 0`): the trainer must not take an optimizer step on it,
only keep its position and archive its records.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plum.config import ConfigFile, derived, load_section
from streams.contracts import schema
from streams.flink.job import FlinkConfig
from streams.flink.reward import RewardWeights
from tokenizer.index import SidIndex
from trainer.archive import ArchiveRecord, HistoryReader
from trainer.fresh import START_FROM, FreshReader, FreshRecord, FreshSource
from trainer.prompt import (
    PROMPT_LAYOUTS,
    Batch,
    SidLookup,
    TrainingSequence,
    UnknownTargetError,
    collate,
    every_position_sequence,
    sft_sequence,
)
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

DATA_SECTION = "trainer_data"
WHEN_IDLE = ("history", "wait")
REWARD_MODES = ("sampled", "weighted")
TRAIN_POSITIONS = ("target", "every")  # DataConfig.train_positions
# A feature value the vocabulary cannot bucket (e.g. negative hours): the example is
# unusable under any SID version, so it is counted as malformed and not archived.
BAD_FEATURES = "bad_features"


def _flink_reward_max(config_file: ConfigFile) -> float:
    return config_file.section(FlinkConfig, "flink").weights().max_reward()


@dataclass(frozen=True)
class DataConfig:
    """How batches are made; `[trainer_data]` of a config TOML."""

    batch_size: int = 32  # examples (rows) per batch
    seq_len: int = 128  # model input length; a sequence is cut to seq_len + 1 tokens
    max_prompt_len: int = 120  # prompt tokens; prompt + SID tokens must fit seq_len + 1
    fresh_fraction: float = 0.5  # share of a batch taken from Kafka; the rest is history
    when_idle: str = "history"  # Kafka quiet: "history" fills batches, "wait" blocks
    fresh_wait_ms: int = 500  # how long a batch waits for fresh examples
    prefetch_batches: int = 4  # batches built ahead (bounded queue)
    reward_mode: str = "sampled"  # "sampled": weight 1 (Flink sampled by reward, eq. 3)
    # "weighted": weight = reward / reward_max, the largest reward the Flink job gives:
    # derived from the [flink] weights (w_click + w_ratio * ratio_cap + w_satisfaction)
    reward_max: float = derived(
        RewardWeights().max_reward(), "[flink] reward weights (r_max)", _flink_reward_max
    )
    history_seed: int = 0
    sid_refresh_s: float = 5.0  # re-read the SID lookup this often
    history_refresh_s: float = 5.0  # re-list the archive's part files this often
    start_from: str = "earliest"  # Kafka start when no position was saved
    # How an example is written (trainer.prompt.PROMPT_LAYOUTS): "target" = history,
    # context and <tgt> (trainer.prompt.sft_prompt); "sequence" = the history alone, the
    # next-item layout the quality bench trains in (trainer.prompt.sequence_prompt; it has
    # no place for the context). Saved in every checkpoint: the gate and serving prompt in
    # it, and a run directory keeps it for good (resuming in another layout is refused).
    prompt_layout: str = "target"
    # Which positions of an example the loss covers: "target" (its target's SID alone) or,
    # in the "sequence" layout only, "every" (trainer.prompt.every_position_sequence): the
    # target and every history item in the prompt after the first, each predicted from the
    # items before it, so one row trains up to history_len targets for the cost of
    # one. Each example is still trained once; a watch is a target again in each later
    # example whose history holds it. With reward_mode = "weighted" every position carries
    # the example's weight (its target's reward: history items carry none). The history
    # carries no click flag either, so an unclicked history item (the simulator's
    # previews) is trained as a target too.
    train_positions: str = "target"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_prompt_len", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len} must be >= 2")
        if self.max_prompt_len > self.seq_len:
            raise ValueError(
                f"max_prompt_len={self.max_prompt_len} > seq_len={self.seq_len}: "
                "the target's SID tokens would be cut off"
            )
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise ValueError(f"fresh_fraction={self.fresh_fraction} must be in [0, 1]")
        if self.when_idle not in WHEN_IDLE:
            raise ValueError(f"when_idle={self.when_idle!r} is not one of {WHEN_IDLE}")
        if self.fresh_wait_ms < 0:
            raise ValueError(f"fresh_wait_ms={self.fresh_wait_ms} must be >= 0")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode={self.reward_mode!r} is not one of {REWARD_MODES}")
        if not self.reward_max > 0:
            raise ValueError(f"reward_max={self.reward_max} must be > 0")
        if self.history_seed < 0:
            raise ValueError(f"history_seed={self.history_seed} must be >= 0")
        for name in ("sid_refresh_s", "history_refresh_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.start_from not in START_FROM:
            raise ValueError(f"start_from={self.start_from!r} is not one of {START_FROM}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(f"prompt_layout={self.prompt_layout!r} is not one of {PROMPT_LAYOUTS}")
        if self.train_positions not in TRAIN_POSITIONS:
            raise ValueError(
                f"train_positions={self.train_positions!r} is not one of {TRAIN_POSITIONS}"
            )
        if self.train_positions == "every" and self.prompt_layout != "sequence":
            raise ValueError(
                'train_positions = "every" needs prompt_layout = "sequence": only there is '
                "every prefix of a prompt the prompt of the item after it"
            )

    @property
    def n_fresh(self) -> int:
        """Fresh rows per batch; at least 1 when fresh_fraction > 0, else Kafka is never read."""
        if self.fresh_fraction == 0.0:
            return 0
        return min(self.batch_size, max(1, round(self.batch_size * self.fresh_fraction)))

    def check_vocab(self, vocab: Vocab) -> None:
        """Sizes that depend on the vocabulary: a prompt with an empty history plus the
        target must fit, and prompt + target must fit in seq_len + 1 tokens."""
        sid = vocab.num_sid_slots
        # <bos> <hist> <ctx> sid(ctx) <tgt>, or <bos> <hist> in the sequence layout
        smallest = 4 + sid if self.prompt_layout == "target" else 2
        if self.max_prompt_len < smallest:
            raise ValueError(
                f"max_prompt_len={self.max_prompt_len} cannot hold an empty-history prompt "
                f"({smallest} tokens with {sid} SID tokens)"
            )
        if self.max_prompt_len + sid > self.seq_len + 1:
            raise ValueError(
                f"max_prompt_len={self.max_prompt_len} + {sid} SID tokens > seq_len + 1 = "
                f"{self.seq_len + 1}: a long prompt would lose its target"
            )


def load_data_config(
    path: Path | str | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> DataConfig:
    """`[trainer_data]` of the TOML at `path`, then PLUM_TRAINER_DATA__* env overrides."""
    return load_section(DataConfig, path, DATA_SECTION, env=env, **overrides)


@dataclass(frozen=True)
class DataPosition:
    """Where the input stands: stored in the checkpoint, resumed from on restore."""

    fresh_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    history_draws: int = 0  # history samples drawn so far (the history cursor)
    archive_step: int = 0  # the archive holds exactly the part files of steps <= this

    def with_archive_step(self, step: int) -> DataPosition:
        return dataclasses.replace(self, archive_step=step)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fresh_offsets": {str(p): o for p, o in sorted(self.fresh_offsets.items())},
            "history_draws": self.history_draws,
            "archive_step": self.archive_step,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataPosition:
        return cls(
            fresh_offsets={int(p): int(o) for p, o in data.get("fresh_offsets", {}).items()},
            history_draws=int(data.get("history_draws", 0)),
            archive_step=int(data.get("archive_step", 0)),
        )


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class MixedBatch:
    """One batch of model inputs and the bookkeeping the trainer keeps with it."""

    batch: Batch  # numpy, always [batch_size, seq_len]
    position: DataPosition  # the position right after this batch
    fresh_records: tuple[ArchiveRecord, ...]  # every decodable fresh record consumed here
    n_fresh: int  # rows of fresh examples
    n_history: int  # rows of history examples
    n_skipped_unknown: int  # fresh records whose target has no SID (archived, not trained)
    n_malformed: int  # fresh records skipped as malformed (not archived)
    sid_version: str
    newest_fresh_ts: int | None  # newest event time among the fresh rows
    wait_s: float = 0.0  # how long next_batch blocked for this batch
    fresh_event_ids: tuple[str, ...] = ()  # event ids of the fresh rows
    unencodable_sids: int = 0  # SIDs of sid_version the vocabulary cannot write

    @property
    def n_rows(self) -> int:
        """Rows with a real example; the rest are zero-weight padding."""
        return self.n_fresh + self.n_history

    @property
    def has_fresh_input(self) -> bool:
        """Whether Kafka delivered anything for this batch (a record, trainable or not)."""
        return bool(self.fresh_records or self.n_malformed)


@dataclass
class DataStats:
    """Running totals, written by the input thread only (read them, do not write)."""

    batches: int = 0
    fresh_examples: int = 0
    history_examples: int = 0
    padding_rows: int = 0
    skipped_unknown_target: int = 0
    history_unknown_target: int = 0
    idle_batches: int = 0  # batches built with no fresh example
    malformed: Counter[str] = field(default_factory=Counter)  # fresh, by reason
    unencodable_sids: int = 0  # in the SID version followed now (SidLookup.unencodable)


@dataclass
class _FreshPart:
    """What one batch took from the fresh source."""

    seqs: list[TrainingSequence] = field(default_factory=list)  # trainable, in row order
    rows: list[FreshRecord] = field(default_factory=list)  # the records of `seqs`
    consumed: list[FreshRecord] = field(default_factory=list)  # rows + unknown targets
    skipped: int = 0  # unknown targets


@dataclass(frozen=True)
class _Failure:
    exc: BaseException


def index_lookup_source(index_path: Path | str) -> Callable[[], SidLookup]:
    """A lookup source reading the active version of the SID index at `index_path`.

    The index is opened on first use (in the input thread) and kept open; every call
    re-reads the whole version, so SIDs assigned since show up. No version switched active
    yet: the only version when there is one, else an empty lookup with version "" (every
    example is then archived, none trained).
    """
    path = Path(index_path)
    index: SidIndex | None = None
    warned = False

    def read() -> SidLookup:
        nonlocal index, warned
        if index is None:
            if not path.exists():
                raise FileNotFoundError(f"SID index {path} does not exist")
            index = SidIndex(path)
        version = index.active_version
        if version is None and len(versions := index.versions()) == 1:
            # one version and no switch yet: the first tokenizer's SIDs are the ones in use
            version = versions[0]
        if version is None:
            if not warned:
                log.warning("SID index %s has no active version: nothing can be trained", path)
                warned = True
            return SidLookup("", {})
        return SidLookup(version, index.all_sids(version))

    return read


class TrainingData:
    """Owns the fresh reader, the history reader and the thread that builds batches."""

    def __init__(
        self,
        config: DataConfig,
        vocab: Vocab,
        lookup_source: Callable[[], SidLookup],
        bootstrap: str | None,
        topic: str | None,
        archive_dir: Path | str,
        start: DataPosition | None = None,
        *,
        fresh: FreshSource | None = None,
        share: tuple[int, int] = (0, 1),
    ):
        """`share`: (index, count) of a multi-process trainer: this process reads the
        partitions p % count == index and builds `config.batch_size` rows (its share)."""
        config.check_vocab(vocab)
        self.config = config
        self.vocab = vocab
        self.stats = DataStats()
        self._lookup_source = lookup_source
        self._lookup = lookup_source()  # fail at start-up, not in the thread
        self._lookup_at = time.monotonic()
        self._count_unencodable()
        start = start or DataPosition()
        self._archive_step = start.archive_step
        self._draws = start.history_draws
        self._history = HistoryReader(archive_dir, config.history_seed, config.history_refresh_s)
        if fresh is None:
            if bootstrap is None or topic is None:
                raise ValueError("bootstrap and topic are needed unless a fresh source is given")
            offsets = start.fresh_offsets if start.fresh_offsets else None
            fresh = FreshReader(bootstrap, topic, offsets, config.start_from, share=share)
        self._fresh = fresh
        try:
            self._last_offsets = dict(fresh.position())
        except BaseException:
            fresh.close()
            raise
        # where this reader starts: only its own partitions (a share of the topic)
        self.start_position = DataPosition(
            dict(self._last_offsets), self._draws, self._archive_step
        )
        self._last_fresh_at = time.monotonic()
        self._idle = False
        self._queue: queue.Queue[MixedBatch | _Failure] = queue.Queue(config.prefetch_batches)
        self.waited_s = 0.0  # total time next_batch blocked (a batch or not): input wait
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="plum-trainer-data", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ consumer side

    def next_batch(self, timeout_s: float) -> MixedBatch | None:
        """The next batch, or None when none was ready within timeout_s. Re-raises an
        exception of the input thread (after the batches it built before failing)."""
        if self._closed:
            raise RuntimeError("TrainingData is closed")
        if self._failure is not None:
            raise self._failure
        t0 = time.monotonic()
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        finally:
            self.waited_s += time.monotonic() - t0
        if isinstance(item, _Failure):
            self._failure = item.exc
            raise item.exc
        return dataclasses.replace(item, wait_s=time.monotonic() - t0)

    def close(self) -> None:
        """Stop the thread, then close the consumer (not thread-safe, so only after)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("input thread did not stop within 30 s; closing the consumer anyway")
        self._fresh.close()

    def __enter__(self) -> TrainingData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ input thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                mb = self._build()
                if mb is not None:
                    self._put(mb)
                elif time.monotonic() - t0 < 0.05:
                    self._stop.wait(0.1)  # nothing to read and nothing waited: do not spin
        except BaseException as exc:  # handed to next_batch, not swallowed
            log.exception("input thread failed")
            self._put(_Failure(exc))

    def _put(self, item: MixedBatch | _Failure) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _refresh_lookup(self) -> None:
        if time.monotonic() - self._lookup_at < self.config.sid_refresh_s:
            return
        self._lookup_at = time.monotonic()
        try:
            lookup = self._lookup_source()
        except Exception as exc:  # a locked SQLite file must not stop training
            log.warning(
                "SID lookup refresh failed, keeping version %r: %s", self._lookup.version, exc
            )
            return
        if lookup.version != self._lookup.version:
            log.info("SID version %r -> %r", self._lookup.version, lookup.version)
        self._lookup = lookup
        self._count_unencodable()

    def _count_unencodable(self) -> None:
        """Count the followed version's SIDs the vocabulary cannot write; warn when it grows."""
        n = self._lookup.unencodable(self.vocab)
        if n > self.stats.unencodable_sids:
            log.warning(
                "%d SIDs of version %r have no tokens in the vocabulary (disambiguation "
                "range %d): those videos read as <unk> and are never trained on as targets",
                n,
                self._lookup.version,
                self.vocab.disambiguation_size,
            )
        self.stats.unencodable_sids = n

    def _weight(self, example: schema.SftExample) -> float:
        if self.config.reward_mode == "sampled":
            return 1.0
        return max(example.reward, 0.0) / self.config.reward_max

    def _sequence(self, example: schema.SftExample) -> TrainingSequence:
        """Raises UnknownTargetError, or ValueError for features the vocab cannot bucket."""
        cfg = self.config
        if cfg.train_positions == "every":
            return every_position_sequence(
                example, self._lookup, self.vocab, cfg.max_prompt_len, self._weight(example)
            )
        return sft_sequence(
            example,
            self._lookup,
            self.vocab,
            cfg.max_prompt_len,
            self._weight(example),
            cfg.prompt_layout,
        )

    def _take_fresh(self, malformed: Counter[str]) -> _FreshPart:
        """Fresh rows for one batch: waits up to fresh_wait_ms for n_fresh trainable ones;
        with when_idle == "wait", keeps waiting past that until some record arrives."""
        cfg = self.config
        want = cfg.n_fresh
        part = _FreshPart()
        cap = 4 * cfg.batch_size  # bound a batch's records when most are not trainable
        malformed_before = sum(self._fresh.malformed.values())
        deadline = time.monotonic() + cfg.fresh_wait_ms / 1000
        while len(part.seqs) < want and len(part.consumed) < cap and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got_any = (
                    part.consumed
                    or malformed
                    or (sum(self._fresh.malformed.values()) > malformed_before)
                )
                if cfg.when_idle == "history" or got_any:
                    break
                self._note_idle()
            timeout = min(remaining, 0.1) if remaining > 0 else 0.1
            for rec in self._fresh.take(want - len(part.seqs), timeout):
                try:
                    seq = self._sequence(rec.example)
                except UnknownTargetError:
                    part.skipped += 1
                    part.consumed.append(rec)  # archived: history may train on it later
                    continue
                except ValueError as exc:  # unusable under any SID version: not archived
                    malformed[BAD_FEATURES] += 1
                    log.warning("skipping record %d@%d: %s", rec.partition, rec.offset, exc)
                    continue
                part.seqs.append(seq)
                part.rows.append(rec)
                part.consumed.append(rec)
        return part

    def _note_idle(self) -> None:
        if not self._idle:
            self._idle = True
            what = (
                "filling batches from history" if self.config.when_idle == "history" else "waiting"
            )
            log.info("kafka quiet for %.1f s: %s", time.monotonic() - self._last_fresh_at, what)

    def _take_history(self, n: int) -> list[TrainingSequence]:
        """Up to n history rows; each attempt is one draw (draws that do not decode or
        whose target has no SID are skipped), at most 4n attempts per batch."""
        seqs: list[TrainingSequence] = []
        attempts = 0
        while len(seqs) < n and attempts < 4 * n and self._history.total_rows:
            attempts += 1
            example = self._history.sample(self._draws)
            self._draws += 1
            if example is None:
                continue
            try:
                seqs.append(self._sequence(example))
            except UnknownTargetError:
                self.stats.history_unknown_target += 1
            except ValueError:
                self._history.undecodable[BAD_FEATURES] += 1
        return seqs

    def _build(self) -> MixedBatch | None:
        cfg = self.config
        self._refresh_lookup()
        self._history.maybe_refresh()
        malformed: Counter[str] = Counter()
        before = Counter(self._fresh.malformed)
        part = self._take_fresh(malformed) if cfg.n_fresh else _FreshPart()
        malformed.update(self._fresh.malformed - before)
        fresh_seqs, rows = part.seqs, part.rows
        if rows:
            if self._idle:
                idle_s = time.monotonic() - self._last_fresh_at
                log.info("fresh examples again after %.1f s", idle_s)
            self._idle = False
            self._last_fresh_at = time.monotonic()
        elif cfg.n_fresh and cfg.when_idle == "history" and not part.consumed and not malformed:
            self._note_idle()
        hist_seqs: list[TrainingSequence] = []
        if cfg.fresh_fraction < 1.0:
            hist_seqs = self._take_history(cfg.batch_size - len(fresh_seqs))
        offsets = self._fresh.position()
        if not fresh_seqs and not hist_seqs and offsets == self._last_offsets:
            return None
        self._last_offsets = dict(offsets)
        n_rows = len(fresh_seqs) + len(hist_seqs)
        padding = [TrainingSequence([], 0, 0.0)] * (cfg.batch_size - n_rows)
        batch = collate(fresh_seqs + hist_seqs + padding, cfg.seq_len, self.vocab.pad_id)
        s = self.stats
        s.batches += 1
        s.fresh_examples += len(fresh_seqs)
        s.history_examples += len(hist_seqs)
        s.padding_rows += len(padding)
        s.idle_batches += int(cfg.n_fresh > 0 and not rows)
        s.malformed.update(malformed)
        s.skipped_unknown_target += part.skipped
        return MixedBatch(
            batch=batch,
            position=DataPosition(offsets, self._draws, self._archive_step),
            fresh_records=tuple(r.archived() for r in part.consumed),
            n_fresh=len(fresh_seqs),
            n_history=len(hist_seqs),
            n_skipped_unknown=part.skipped,
            n_malformed=sum(malformed.values()),
            sid_version=self._lookup.version,
            newest_fresh_ts=max((r.example.ts for r in rows), default=None),
            fresh_event_ids=tuple(r.example.event_id for r in rows),
            unencodable_sids=self.stats.unencodable_sids,
        )
