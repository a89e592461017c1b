"""The SID index serving searches: an immutable value, replaced whole on every change.

A `ServingIndex` is every assignment of one sid_version up to delta sequence `seq` (in
sequence order), the dense trie of the SIDs the vocabulary can write (trainer/beam.py)
and the video id -> SID lookup prompts are written with (trainer/prompt.py). Nothing in
it ever changes: `apply(delta)` returns a NEW index, so a search that started on the old
one finishes on it and a reader never sees half a delta; the model slot swaps the new one
in with one reference assignment.

Sequence semantics are those of serving/sid_delta.py: a delta already applied returns
the same index and 0; one that starts after `seq` (a gap) or belongs to another
sid_version raises `SequenceGap` with the sequence the sender must resume from; an
assignment that contradicts the index (a SID already another video's, or a video already
holding another SID) raises `DeltaError`.

Trie shapes: the search is compiled per trie table shape, so each table's node count is
padded to a power of two with headroom and never shrinks from one index to the next
(`floors`): adding videos changes a shape (and costs a warm-up compile) only when a count
crosses a padded size, and splitting deltas differently ends with the same shapes.

SIDs the vocabulary cannot write (e.g. a disambiguation code beyond its range) are
sequenced but not servable: they are counted in `unservable`, and a request naming such a
video counts it as unknown, exactly as the trainer reads it as `<unk>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from serving.artifact import IndexSnapshot
from serving.sid_delta import DeltaAssignment, DeltaError, SidDelta
from trainer.beam import SidTrie, build_trie
from trainer.prompt import SidLookup
from trainer.vocab import InvalidSidError, Vocab

# The smallest padded node count of a deep table: tiny indexes (tests, a fresh platform)
# grow for a while before their first shape change.
MIN_NODES = 64


class SequenceGap(Exception):
    """A delta serving cannot apply in order: the sender re-sends from `expected_seq`.

    Raised for a gap (from_seq > the index's seq) and for a delta of another sid_version
    (serving answers 409 with both members either way)."""

    def __init__(self, expected_seq: int, sid_version: str, detail: str) -> None:
        super().__init__(detail)
        self.expected_seq = expected_seq
        self.sid_version = sid_version
        self.detail = detail


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _node_counts(slots: np.ndarray, num_slots: int) -> list[int]:
    """Distinct prefixes of each length 0 .. num_slots - 1 (rows each trie table needs)."""
    counts = [1]
    for level in range(1, num_slots):
        counts.append(len(np.unique(slots[:, :level], axis=0)) if len(slots) else 0)
    return counts


def _floors(
    slots: np.ndarray, slot_sizes: Sequence[int], previous: Sequence[int] | None
) -> tuple[int, ...]:
    """Padded node counts per table: a power of two >= 1.25 x the count (at least
    MIN_NODES, at most the prefixes that can exist), never below `previous`."""
    out = []
    cap = 1
    for level, count in enumerate(_node_counts(slots, len(slot_sizes))):
        wanted = min(_pow2(cap), _pow2(max(MIN_NODES, count + count // 4)))
        floor = max(wanted, _pow2(count), previous[level] if previous else 0)
        out.append(floor)
        cap *= int(slot_sizes[level])
    return tuple(out)


@dataclass(frozen=True)
class ServingIndex:
    """Every SID of `sid_version` up to `seq`, ready to search; see the module docstring."""

    sid_version: str
    seq: int
    video_ids: tuple[str, ...]  # every sequenced assignment, in sequence order
    sids: tuple[tuple[int, ...], ...]  # their SID codes, as assigned
    vocab: Vocab = field(repr=False, compare=False)
    trie: SidTrie = field(repr=False, compare=False)  # rows = servable items, in order
    trie_video_ids: tuple[str, ...]  # trie row -> video id
    floors: tuple[int, ...]  # node count of each trie table
    unservable: int  # sequenced assignments whose SID the vocabulary cannot write
    _rows: Mapping[str, int] = field(repr=False, compare=False)  # video id -> position
    _by_slots: Mapping[tuple[int, ...], str] = field(repr=False, compare=False)
    lookup: SidLookup = field(repr=False, compare=False)  # servable videos only

    # ------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        sid_version: str,
        seq: int,
        video_ids: Sequence[str],
        sids: Sequence[Sequence[int]],
        vocab: Vocab,
        previous_floors: Sequence[int] | None = None,
    ) -> ServingIndex:
        """An index of these assignments (sequence order); raises DeltaError when two
        videos share a SID or one video appears twice."""
        if len(video_ids) != len(sids):
            raise DeltaError(f"{len(video_ids)} video ids for {len(sids)} SIDs")
        if seq < len(video_ids):
            raise DeltaError(f"seq={seq} < {len(video_ids)} assignments")
        rows: dict[str, int] = {}
        by_slots: dict[tuple[int, ...], str] = {}
        servable: list[tuple[int, ...]] = []
        servable_ids: list[str] = []
        codes_of: dict[str, tuple[int, ...]] = {}
        unservable = 0
        for pos, (video, codes) in enumerate(zip(video_ids, sids, strict=True)):
            codes = tuple(int(c) for c in codes)
            if video in rows:
                raise DeltaError(f"video {video!r} is assigned twice in sid_version {sid_version}")
            rows[video] = pos
            try:
                slots = vocab.sid_slots(codes)
            except InvalidSidError:
                unservable += 1
                continue
            owner = by_slots.get(slots)
            if owner is not None:
                raise DeltaError(
                    f"SID {list(codes)} of video {video!r} is already video {owner!r}'s "
                    f"in sid_version {sid_version}"
                )
            by_slots[slots] = video
            servable.append(slots)
            servable_ids.append(video)
            codes_of[video] = codes
        slot_sizes = vocab.sid_slot_sizes
        slots_arr = np.array(servable, np.int64).reshape(-1, len(slot_sizes))
        floors = _floors(slots_arr, slot_sizes, previous_floors)
        trie = build_trie(slots_arr, slot_sizes, pad_pow2=True, min_nodes=floors)
        return cls(
            sid_version=sid_version,
            seq=int(seq),
            video_ids=tuple(video_ids),
            sids=tuple(tuple(int(c) for c in s) for s in sids),
            vocab=vocab,
            trie=trie,
            trie_video_ids=tuple(servable_ids),
            floors=tuple(int(t.shape[0]) for t in trie.tables),
            unservable=unservable,
            _rows=MappingProxyType(rows),
            _by_slots=MappingProxyType(by_slots),
            lookup=SidLookup(sid_version, MappingProxyType(codes_of)),
        )

    @classmethod
    def from_snapshot(cls, snapshot: IndexSnapshot, vocab: Vocab) -> ServingIndex:
        """The index a model artifact ships (its sid_version up to its seq)."""
        return cls.build(
            snapshot.sid_version, snapshot.seq, snapshot.video_ids, snapshot.sids, vocab
        )

    def with_vocab(self, vocab: Vocab) -> ServingIndex:
        """The same assignments under another vocabulary (a new model kept this index):
        servability is the new vocabulary's to decide, shapes never shrink."""
        return ServingIndex.build(
            self.sid_version, self.seq, self.video_ids, self.sids, vocab, self.floors
        )

    # ------------------------------------------------------------ reading

    @property
    def items(self) -> int:
        """Videos servable: rows of the trie."""
        return len(self.trie_video_ids)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The trie table shapes: a search is compiled per these."""
        return tuple(tuple(t.shape) for t in self.trie.tables)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._rows

    def sid_of(self, video_id: str) -> tuple[int, ...] | None:
        pos = self._rows.get(video_id)
        return None if pos is None else self.sids[pos]

    # ------------------------------------------------------------ deltas

    def missing(self, delta: SidDelta) -> tuple[DeltaAssignment, ...]:
        """The delta's assignments this index lacks (raises SequenceGap as `apply`)."""
        if delta.sid_version != self.sid_version:
            raise SequenceGap(
                self.seq,
                self.sid_version,
                f"delta is for sid_version {delta.sid_version!r}; serving runs "
                f"{self.sid_version!r} (a version switch comes with a model)",
            )
        if delta.to_seq <= self.seq:
            return ()
        if delta.from_seq > self.seq:
            raise SequenceGap(
                self.seq,
                self.sid_version,
                f"delta starts after seq {delta.from_seq}; the index is at {self.seq}",
            )
        return delta.after(self.seq)

    def apply(self, delta: SidDelta) -> tuple[ServingIndex, int]:
        """(the index with the delta applied, how many sequence numbers it added).

        Already applied: (self, 0). Idempotent and split-invariant: applying a delta twice
        equals once; two deltas covering 1..m and m+1..n equal one covering 1..n."""
        new = self.missing(delta)
        if not new:
            return self, 0
        for a in new:
            known = self.sid_of(a.video_id)
            if known is not None:
                raise DeltaError(
                    f"video {a.video_id!r} already has SID {list(known)} in sid_version "
                    f"{self.sid_version}; the delta assigns {list(a.sid)}"
                )
        index = ServingIndex.build(
            self.sid_version,
            delta.to_seq,
            self.video_ids + tuple(a.video_id for a in new),
            self.sids + tuple(tuple(a.sid) for a in new),
            self.vocab,
            self.floors,
        )
        return index, len(new)
