"""Load tokenizer training data from files into the in-memory form `train_tokenizer` takes.

Data specs (the `--data` argument):

    simulator:PATH   PATH is a JSONL of UploadEvents (plum.uploads.v1 values), or a folder
                     holding uploads.jsonl and optionally pairs.jsonl / cooccurrence.jsonl
    movielens:DIR    DIR holds ml-100k.item and ml-100k.inter (RecBole atomic files, see
                     /work/shared/data/fetch-movielens-100k), read by
                     streams.datasets.movielens: the inputs are the embeddings the pipeline
                     publishes on the uploads (`catalogue`), the pairs consecutive
                     well-rated movies in each user's timeline

Pairs files: JSONL whose lines are CooccurrencePair values ({"a", "b", "count", ...}) or
[a, b] arrays, or plain text lines "a b" / "a,b". Pairs naming unknown items are skipped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.contracts.schema import UploadEvent, ValidationError, decode_upload
from streams.datasets import movielens as ml

log = logging.getLogger(__name__)


class DataSpecError(ValueError):
    """A --data spec or file that cannot be read as tokenizer training data."""


@dataclass(frozen=True)
class ItemData:
    ids: tuple[str, ...]
    embeddings: dict[str, np.ndarray]  # name -> [N, d]
    pairs: np.ndarray  # [P, 2] int32 row indices into ids


def load_items(
    spec: str,
    pairs_path: str | Path | None = None,
    movielens_cfg: ml.MovieLensConfig | None = None,
) -> ItemData:
    """The items of a --data spec; `movielens_cfg` ([movielens]) decides the MovieLens
    embeddings, as it does for the import into the pipeline."""
    kind, _, where = spec.partition(":")
    if not where:
        raise DataSpecError(f"data spec {spec!r} is not KIND:PATH")
    path = Path(where)
    if kind == "simulator":
        uploads = path / "uploads.jsonl" if path.is_dir() else path
        ids, embeddings = read_uploads(uploads)
        if pairs_path is None and path.is_dir():
            found = [p for p in (path / "pairs.jsonl", path / "cooccurrence.jsonl") if p.exists()]
            pairs_path = found[0] if found else None
        pairs = read_pairs(pairs_path, ids) if pairs_path else np.zeros((0, 2), np.int32)
        return ItemData(ids, embeddings, pairs)
    if kind == "movielens":
        data = read_movielens(path, movielens_cfg)
        if pairs_path:
            data = ItemData(data.ids, data.embeddings, read_pairs(pairs_path, data.ids))
        return data
    raise DataSpecError(f"unknown data kind {kind!r} in {spec!r}; use simulator: or movielens:")


def read_uploads(path: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Valid uploads of a JSONL file; invalid lines are skipped and counted. A re-upload of
    a video id replaces the earlier one."""
    if not path.exists():
        raise DataSpecError(f"uploads file not found: {path}")
    uploads: list[UploadEvent] = []
    bad: Counter[str] = Counter()
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                uploads.append(decode_upload(line))
            except ValidationError as exc:
                bad[exc.reason] += 1
    if bad:
        log.warning("skipped %d invalid uploads in %s: %s", sum(bad.values()), path, dict(bad))
    if not uploads:
        raise DataSpecError(f"no valid uploads in {path}")
    return items_from_uploads(uploads)


def items_from_uploads(
    uploads: Iterable[UploadEvent],
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(ids in order of first arrival, name -> [N, d] float32) of the uploads' embeddings.

    A re-upload of a video id replaces the earlier embeddings (keeping the first
    arrival's place). Items whose embedding layout (names and widths) differs from the
    most common one are left out with a warning: one model takes one layout.
    """
    by_id: dict[str, dict[str, tuple[float, ...]]] = {}
    for event in uploads:
        by_id[event.video_id] = dict(event.embeddings)
    if not by_id:
        raise DataSpecError("no uploads to take item embeddings from")
    shapes = Counter(tuple(sorted((k, len(v)) for k, v in e.items())) for e in by_id.values())
    layout, _ = shapes.most_common(1)[0]
    if len(shapes) > 1:
        log.warning(
            "uploads have %d embedding layouts; keeping the %d items with %s",
            len(shapes),
            shapes[layout],
            layout,
        )
    ids = tuple(
        v for v, e in by_id.items() if tuple(sorted((k, len(x)) for k, x in e.items())) == layout
    )
    embeddings = {name: np.array([by_id[v][name] for v in ids], np.float32) for name, _ in layout}
    return ids, embeddings


def pair_rows(pairs: Iterable[tuple[str, str]], ids: Sequence[str]) -> np.ndarray:
    """[P, 2] int32 row indices into `ids` of the distinct id pairs; pairs naming an
    unknown id, and self-pairs, are dropped."""
    index = {v: i for i, v in enumerate(ids)}
    rows = sorted({(index[a], index[b]) for a, b in pairs if a in index and b in index and a != b})
    return np.asarray(rows, np.int32).reshape(-1, 2)


def read_pairs(path: str | Path, ids: tuple[str, ...]) -> np.ndarray:
    index = {v: i for i, v in enumerate(ids)}
    out, unknown = [], 0
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line[0] in "{[":
                obj = json.loads(line)
                a, b = (obj["a"], obj["b"]) if isinstance(obj, dict) else (obj[0], obj[1])
            else:
                parts = line.replace(",", " ").split()
                if len(parts) < 2:
                    raise DataSpecError(f"{path}: line {line!r} is not a pair")
                a, b = parts[0], parts[1]
            a, b = str(a), str(b)
            if a in index and b in index and a != b:
                out.append((index[a], index[b]))
            else:
                unknown += 1
    if unknown:
        log.info("skipped %d pairs naming unknown items (or self-pairs) in %s", unknown, path)
    return np.array(out, np.int32).reshape(-1, 2)


# -------------------------------------------------------------------------- MovieLens


def read_movielens(
    directory: Path,
    cfg: ml.MovieLensConfig | None = None,
    min_stars: float = 4.0,
    max_gap: int = 1,
) -> ItemData:
    """MovieLens-100k items as the pipeline publishes them (streams.datasets.movielens
    `catalogue`: video ids and upload embeddings), with co-occurring pairs: in each
    user's timeline of films rated >= `min_stars`, every film and the `max_gap` after it."""
    directory = Path(directory)
    if not ml.has_files(directory):
        raise DataSpecError(
            f"{directory} holds no {' / '.join(ml.REQUIRED_FILES)}; fetch them with "
            "/work/shared/data/fetch-movielens-100k"
        )
    cfg = cfg or ml.MovieLensConfig()
    data = ml.load(directory)
    ids, embeddings = items_from_uploads(ml.catalogue(data, cfg))
    index = {v: i for i, v in enumerate(ids)}
    by_user: dict[str, list[int]] = {}
    for r in data.ratings:  # timeline order (rating_order_key)
        if r.stars >= min_stars:
            by_user.setdefault(r.user_id, []).append(index[ml.video_id(r.item_id, cfg)])
    counts: Counter[tuple[int, int]] = Counter()
    for seq in by_user.values():
        for i in range(len(seq)):
            for j in range(i + 1, min(len(seq), i + 1 + max_gap)):
                a, b = seq[i], seq[j]
                if a != b:
                    counts[(min(a, b), max(a, b))] += 1
    pairs = np.array(sorted(counts), np.int32).reshape(-1, 2)
    log.info("movielens: %d items, %d co-occurring pairs", len(ids), len(pairs))
    return ItemData(ids, embeddings, pairs)
