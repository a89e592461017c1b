"""Shared by the trainer input tests: a tiny vocabulary, an in-memory SID lookup, examples,
and a fake fresh source with the FreshReader interface (no Kafka)."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

from streams.contracts import schema
from trainer.archive import ArchiveRecord
from trainer.fresh import FreshRecord
from trainer.prompt import SidLookup
from trainer.vocab import Vocab, train_text_tokenizer

LEVELS = (4, 3, 2)  # + disambiguation slot: 4 SID tokens per item
N_VIDEOS = 24
BASE_TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def tiny_vocab() -> Vocab:
    text = train_text_tokenizer(["a user watched some videos today"] * 10, 300)
    return Vocab(text, LEVELS, disambiguation_size=1)


def lookup(version: str = "v1", known: int = N_VIDEOS) -> SidLookup:
    """Videos v0 .. v{known-1} have SIDs; any other video id is unknown."""
    codes = list(itertools.product(*map(range, LEVELS)))[:known]
    return SidLookup(version, {f"v{i}": (*c, 0) for i, c in enumerate(codes)})


def example(i: int, target: str | None = None, reward: float = 1.0, ts: int | None = None):
    history = tuple(
        schema.HistoryItem(f"v{(i + k) % N_VIDEOS}", 0.5, 30.0, 2.0 + k) for k in range(1, 4)
    )
    return schema.SftExample(
        event_id=f"e{i}",
        user_id=f"u{i % 7}",
        history=history,
        context_video_id=f"v{(i + 5) % N_VIDEOS}",
        target_video_id=target if target is not None else f"v{i % N_VIDEOS}",
        reward=reward,
        ts=BASE_TS + i * 1000 if ts is None else ts,
    )


def archive_records(examples, partition: int = 0) -> list[ArchiveRecord]:
    return [
        ArchiveRecord(partition, off, ex.ts, schema.encode(ex), ex.event_id)
        for off, ex in enumerate(examples)
    ]


class FakeFresh:
    """The FreshSource interface over in-memory partitions; `add` wakes a waiting take."""

    def __init__(self, partitions: int = 2, start: dict[int, int] | None = None):
        self.malformed: Counter[str] = Counter()
        self._logs: dict[int, list[bytes | None]] = {p: [] for p in range(partitions)}
        self._next = {p: (start or {}).get(p, 0) for p in range(partitions)}
        self._rr = itertools.cycle(range(partitions))
        self._cond = threading.Condition()
        self.closed = False
        self.fail_with: BaseException | None = None

    def add(self, partition: int, value: bytes | None) -> int:
        with self._cond:
            self._logs[partition].append(value)
            self._cond.notify_all()
            return len(self._logs[partition]) - 1

    def add_examples(self, examples) -> None:
        for i, ex in enumerate(examples):
            self.add(i % len(self._logs), schema.encode(ex))

    def end_offsets(self) -> dict[int, int]:
        return {p: len(log) for p, log in self._logs.items()}

    def _available(self) -> bool:
        return any(self._next[p] < len(log) for p, log in self._logs.items())

    def take(self, max_records: int, timeout_s: float) -> list[FreshRecord]:
        if self.fail_with is not None:
            raise self.fail_with
        out: list[FreshRecord] = []
        with self._cond:
            if not self._available():
                self._cond.wait(timeout_s)
            while len(out) < max_records and self._available():
                p = next(self._rr)
                if self._next[p] >= len(self._logs[p]):
                    continue
                off = self._next[p]
                self._next[p] += 1
                value = self._logs[p][off]
                try:
                    ex = schema.decode_sft_example(value)
                except schema.ValidationError as exc:
                    self.malformed[exc.reason] += 1
                    continue
                out.append(FreshRecord(p, off, value, ex))
        return out

    def position(self) -> dict[int, int]:
        with self._cond:
            return dict(self._next)

    def close(self) -> None:
        self.closed = True
