"""Load tokenizer training data from files into the in-memory form `train_tokenizer` takes.

Data specs (the `--data` argument):

    simulator:PATH   PATH is a JSONL of UploadEvents (plum.uploads.v1 values), or a folder
                     holding uploads.jsonl and optionally pairs.jsonl / cooccurrence.jsonl
    movielens:DIR    DIR holds ml-100k.item and ml-100k.inter (RecBole atomic files, see
                     /work/shared/data/fetch-movielens-100k); content inputs are built from
                     the metadata (genres, title words, release year) and pairs from
                     consecutive well-rated movies in each user's timeline

Pairs files: JSONL whose lines are CooccurrencePair values ({"a", "b", "count", ...}) or
[a, b] arrays, or plain text lines "a b" / "a,b". Pairs naming unknown items are skipped.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.contracts.schema import ValidationError, decode_upload

log = logging.getLogger(__name__)


class DataSpecError(ValueError):
    """A --data spec or file that cannot be read as tokenizer training data."""


@dataclass(frozen=True)
class ItemData:
    ids: tuple[str, ...]
    embeddings: dict[str, np.ndarray]  # name -> [N, d]
    pairs: np.ndarray  # [P, 2] int32 row indices into ids


def load_items(spec: str, pairs_path: str | Path | None = None) -> ItemData:
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
        data = read_movielens(path)
        if pairs_path:
            data = ItemData(data.ids, data.embeddings, read_pairs(pairs_path, data.ids))
        return data
    raise DataSpecError(f"unknown data kind {kind!r} in {spec!r}; use simulator: or movielens:")


def read_uploads(path: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Valid uploads of a JSONL file; invalid lines are skipped and counted. A re-upload of
    a video id replaces the earlier one."""
    if not path.exists():
        raise DataSpecError(f"uploads file not found: {path}")
    by_id: dict[str, dict[str, tuple[float, ...]]] = {}
    bad: Counter[str] = Counter()
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                event = decode_upload(line)
            except ValidationError as exc:
                bad[exc.reason] += 1
                continue
            by_id[event.video_id] = dict(event.embeddings)
    if bad:
        log.warning("skipped %d invalid uploads in %s: %s", sum(bad.values()), path, dict(bad))
    if not by_id:
        raise DataSpecError(f"no valid uploads in {path}")
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

TITLE_DIM = 64


def _hashed_words(text: str, dim: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    for word in text.lower().replace("(", " ").replace(")", " ").replace(",", " ").split():
        v[zlib.crc32(word.encode()) % dim] += 1.0
    return v


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """A RecBole atomic file: tab-separated, header 'name:type' per column."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    return header, rows


def read_movielens(directory: Path, min_rating: float = 4.0, max_gap: int = 1) -> ItemData:
    item_file, inter_file = directory / "ml-100k.item", directory / "ml-100k.inter"
    for f in (item_file, inter_file):
        if not f.exists():
            raise DataSpecError(
                f"{f} not found; fetch it with /work/shared/data/fetch-movielens-100k"
            )
    header, rows = _read_atomic(item_file)
    col = {h: i for i, h in enumerate(header)}
    genres = sorted({g for r in rows for g in r[col["class"]].split()})
    ids, title, genre, year = [], [], [], []
    for r in rows:
        ids.append(r[col["item_id"]])
        title.append(_hashed_words(r[col["movie_title"]], TITLE_DIM))
        g = np.zeros(len(genres), np.float32)
        for name in r[col["class"]].split():
            g[genres.index(name)] = 1.0
        genre.append(g)
        raw_year = r[col["release_year"]].strip()
        y = float(raw_year) if raw_year.isdigit() else 1990.0  # the data set writes 'unkonwn'
        decades = np.zeros(10, np.float32)
        decades[int(np.clip((y - 1920) // 10, 0, 9))] = 1.0
        year.append(np.concatenate([[(y - 1990.0) / 20.0], decades]).astype(np.float32))
    embeddings = {"title": np.stack(title), "genre": np.stack(genre), "year": np.stack(year)}

    index = {v: i for i, v in enumerate(ids)}
    header, inter = _read_atomic(inter_file)
    col = {h: i for i, h in enumerate(header)}
    by_user: dict[str, list[tuple[float, int]]] = {}
    for r in inter:
        if float(r[col["rating"]]) >= min_rating and r[col["item_id"]] in index:
            by_user.setdefault(r[col["user_id"]], []).append(
                (float(r[col["timestamp"]]), index[r[col["item_id"]]])
            )
    counts: Counter[tuple[int, int]] = Counter()
    for seq in by_user.values():
        seq.sort()
        for i in range(len(seq)):
            for j in range(i + 1, min(len(seq), i + 1 + max_gap)):
                a, b = seq[i][1], seq[j][1]
                if a != b:
                    counts[(min(a, b), max(a, b))] += 1
    pairs = np.array(sorted(counts), np.int32).reshape(-1, 2)
    log.info("movielens: %d items, %d co-occurring pairs", len(ids), len(pairs))
    return ItemData(tuple(ids), embeddings, pairs)
