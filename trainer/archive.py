"""The historical half of the trainer's input: an archive of fresh examples already trained on.

Layout (date-partitioned Parquet, one file per flush and UTC date of the records' event time):

    <archive>/date=YYYY-MM-DD/part-{step:010d}.parquet
        partition int32, offset int64, ts int64 (event ms), event_id string, value binary

The values are the raw Kafka bytes of `plum.sft-examples.v1` (video ids, not SIDs), so
history is re-tokenized under whatever SID version the trainer follows when it is drawn.

Exactness across restarts: the trainer `append`s the fresh records of each batch it
trained on, and calls `flush(step)` right before it saves checkpoint `step`. A crash
after a flush but before (or during) the save leaves part files with a step above the
last good checkpoint; `truncate_after(restored_step)` deletes them, because the examples
in them will be consumed again from Kafka (the checkpoint's offsets predate them), and
keeping them would put each twice into history.

Sampling (`HistoryReader`) is uniform over archived rows and deterministic: draw i picks
its row with `np.random.default_rng([seed, i])` over the sorted list of part files, so a
restart with the same draw count and the same files draws the same examples.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streams.contracts import schema

log = logging.getLogger(__name__)

PART_RE = re.compile(r"^part-(\d{10})\.parquet$")
DATE_DIR_PREFIX = "date="
ARROW_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("ts", pa.int64()),
        ("event_id", pa.string()),
        ("value", pa.binary()),
    ]
)


@dataclass(frozen=True)
class ArchiveRecord:
    """One consumed `plum.sft-examples.v1` record, as kept in the archive."""

    partition: int
    offset: int
    ts: int  # the example's event time, epoch ms (decides the date partition)
    value: bytes  # the raw Kafka value
    event_id: str


def utc_date(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def part_step(path: Path) -> int | None:
    """The flush step in a part file's name, or None when the name is not a part file."""
    m = PART_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_parts(directory: Path) -> list[Path]:
    """Every finished part file, sorted (date, then step): the order draws index into."""
    if not directory.is_dir():
        return []
    parts = []
    for date_dir in directory.iterdir():
        if not (date_dir.is_dir() and date_dir.name.startswith(DATE_DIR_PREFIX)):
            continue
        parts += [p for p in date_dir.iterdir() if part_step(p) is not None]
    return sorted(parts)


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write, fsync, rename: a reader or a crash never sees half a part file."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class HistoryArchive:
    """The writer side: buffers trained fresh records, writes them as part files on flush.

    Used from one thread (the training loop's).
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._buffer: list[ArchiveRecord] = []

    @property
    def pending(self) -> int:
        """Records appended but not flushed yet."""
        return len(self._buffer)

    def append(self, records: Iterable[ArchiveRecord]) -> None:
        self._buffer.extend(records)

    def flush(self, step: int) -> list[Path]:
        """Write the buffer as part files of `step` (one per UTC date) and clear it.

        A no-op for an empty buffer, so saving the same step twice (e.g. right after a
        restore) is harmless. Raises FileExistsError rather than overwrite a part file
        of the same step: that would silently drop archived examples. All or nothing: when
        a write fails (disk full) the part files this call wrote are deleted and the buffer
        kept, so a later flush archives every record once.
        """
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        if not self._buffer:
            return []
        by_date: dict[str, list[ArchiveRecord]] = {}
        for r in self._buffer:
            by_date.setdefault(utc_date(r.ts), []).append(r)
        targets = {
            d: self.directory / f"{DATE_DIR_PREFIX}{d}" / f"part-{step:010d}.parquet"
            for d in by_date
        }
        clash = [str(p) for p in targets.values() if p.exists()]
        if clash:
            raise FileExistsError(f"archive part files of step {step} already exist: {clash}")
        written: list[Path] = []
        try:
            self._write_parts(by_date, targets, written)
        except BaseException:
            for p in [*written, *(t.with_name(f".{t.name}.tmp") for t in targets.values())]:
                p.unlink(missing_ok=True)
            raise
        log.debug(
            "archived %d records in %d part files (step %d)", len(self._buffer), len(written), step
        )
        self._buffer.clear()
        return written

    def _write_parts(
        self,
        by_date: dict[str, list[ArchiveRecord]],
        targets: dict[str, Path],
        written: list[Path],
    ) -> None:
        for d, rows in sorted(by_date.items()):
            table = pa.Table.from_pydict(
                {
                    "partition": [r.partition for r in rows],
                    "offset": [r.offset for r in rows],
                    "ts": [r.ts for r in rows],
                    "event_id": [r.event_id for r in rows],
                    "value": [r.value for r in rows],
                },
                schema=ARROW_SCHEMA,
            )
            targets[d].parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(table, targets[d])
            written.append(targets[d])

    def truncate_after(self, step: int) -> int:
        """Delete every part file of a step > `step` (and leftover temp files); returns how
        many part files were deleted. Call on restore of checkpoint `step`."""
        deleted = 0
        if not self.directory.is_dir():
            return 0
        for date_dir in self.directory.iterdir():
            if not date_dir.is_dir() or not date_dir.name.startswith(DATE_DIR_PREFIX):
                continue
            for p in date_dir.iterdir():
                s = part_step(p)
                if s is not None and s > step:
                    p.unlink()
                    deleted += 1
                elif p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink()
            if not any(date_dir.iterdir()):
                date_dir.rmdir()
        if deleted:
            log.info("archive: deleted %d part files written after step %d", deleted, step)
        return deleted

    def count(self) -> int:
        """Rows in flushed part files (what history can draw from); not the buffer."""
        return sum(pq.read_metadata(p).num_rows for p in list_parts(self.directory))


class HistoryReader:
    """Deterministic uniform sampling of archived examples, without loading the archive.

    Keeps only per-file row counts (from Parquet footers) and a small LRU of the `value`
    column of recently drawn files, so an archive of 1e8 rows costs a list of files, not
    the rows. Used from one thread (the input pipeline's).
    """

    def __init__(
        self,
        directory: Path | str,
        seed: int,
        refresh_s: float = 5.0,
        cache_files: int = 8,
    ):
        self.directory = Path(directory)
        self.seed = int(seed)
        self.refresh_s = refresh_s
        self.cache_files = cache_files
        self.undecodable: Counter[str] = Counter()  # reason -> count of skipped rows
        self._files: list[Path] = []
        self._counts: dict[Path, int] = {}  # part files never change once written
        self._cum = np.zeros(0, np.int64)  # [files] cumulative row counts
        self._cache: OrderedDict[Path, pa.Array] = OrderedDict()
        self._refreshed_at = float("-inf")
        self.refresh()

    @property
    def total_rows(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def refresh(self) -> int:
        """Re-list the part files (new flushes, truncations); returns the row count."""
        files = list_parts(self.directory)
        counts = []
        for p in files:
            if p not in self._counts:
                try:
                    self._counts[p] = pq.read_metadata(p).num_rows
                except FileNotFoundError:  # truncated between listing and reading
                    self._counts[p] = 0
            counts.append(self._counts[p])
        live = set(files)
        self._counts = {p: n for p, n in self._counts.items() if p in live}
        for p in [p for p in self._cache if p not in live]:
            del self._cache[p]
        self._files = files
        self._cum = np.cumsum(np.asarray(counts, np.int64))
        self._refreshed_at = time.monotonic()
        return self.total_rows

    def maybe_refresh(self) -> None:
        if time.monotonic() - self._refreshed_at >= self.refresh_s:
            self.refresh()

    def locate(self, draw: int) -> tuple[Path, int] | None:
        """(file, row) of draw number `draw`; None when the archive is empty."""
        total = self.total_rows
        if total == 0:
            return None
        row = int(np.random.default_rng([self.seed, draw]).integers(total))
        i = int(np.searchsorted(self._cum, row, side="right"))
        before = int(self._cum[i - 1]) if i else 0
        return self._files[i], row - before

    def _values(self, path: Path) -> pa.Array:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        values = pq.read_table(path, columns=["value"]).column("value").combine_chunks()
        self._cache[path] = values
        while len(self._cache) > self.cache_files:
            self._cache.popitem(last=False)
        return values

    def raw(self, draw: int) -> bytes | None:
        """The raw value of draw number `draw`, or None when the archive is empty."""
        where = self.locate(draw)
        if where is None:
            return None
        path, row = where
        try:
            return self._values(path)[row].as_py()
        except FileNotFoundError:
            # deleted under us (a restore truncated the archive): the next refresh sees it
            self.refresh()
            return None

    def sample(self, draw: int) -> schema.SftExample | None:
        """The decoded example of draw `draw`; None when the archive is empty or the row
        does not decode (counted in `undecodable` by reason)."""
        value = self.raw(draw)
        if value is None:
            return None
        try:
            return schema.decode_sft_example(value)
        except schema.ValidationError as exc:
            self.undecodable[exc.reason] += 1
            log.warning("archive row of draw %d does not decode: %s", draw, exc)
            return None
