"""MovieLens-100k as PLUM Stream events: parsing and conversion, no I/O beyond reading files.

Input: the RecBole "atomic" files written by `../shared/data/fetch-movielens-100k DIR`,
tab-separated with a typed header (`user_id:token	item_id:token	rating:float
timestamp:float`); columns are found by name, not position.

- `ml-100k.inter`: one rating per line (user, item, 1..5 stars, unix seconds).
- `ml-100k.item`: item id, title, release year, genres (space-separated, e.g.
  `Animation Children's Comedy`).
- `ml-100k.user`: user id and demographics (only the ids are used).

Mapping (every choice here is a documented assumption; MovieLens has no watches):

| PLUM field | from MovieLens |
|---|---|
| `video_id` | `"{id_prefix}-m{item_id}"` (prefixed so it never collides with simulated ids) |
| `user_id` | `"{id_prefix}-u{user_id}"` |
| watch `event_id` | `"{id_prefix}-{user}-{timestamp}-{tie:04d}-{item}"`: deterministic, unique per rating. `tie` is the rating's place among the user's ratings of the same second, in file order (`Rating.tie`), so a user's watches of one millisecond sorted by event id (the Flink job's tie rule, streams/flink/timeline.py) keep the file's order, as the standard split does |
| watch `ts` | `timestamp * 1000` (ms) |
| watch ratio | `min(1, rating / 5)`: 1 star = 0.2 of the film, 5 stars = a full watch |
| `watch_time_s` | `ratio * duration_s` (rounded to ms) |
| `video_duration_s`, `duration_s` | `MovieLensConfig.duration_s` for every item (default 6000 s = 100 min, about a feature film). MovieLens has no durations and a per-item invented one would be noise a model could fit |
| `clicked` | always `True`: a rating means the user chose the film |
| `satisfaction` | `(rating - 1) / 4` in [0, 1]: a star rating *is* an explicit survey answer |
| `surface` | `MovieLensConfig.surface` (`"movielens"`) |
| `context_video_id` | the same user's previous rating's item (None for the first) |
| upload `ts` | the item's first rating time minus 1 ms, so every upload precedes its first watch; an item nobody rated is uploaded 1 ms after the last rating |
| upload `title` | the title as given |
| upload `description` | `"Released {year}. Genres: {g1}, {g2}."` (year omitted when unknown) |
| upload `topics` | the genres, verbatim (including MovieLens's own `unknown` genre) |
| upload `channel` | `"movielens-100k"` |
| upload `embeddings` | `text` and `genre`, see `streams.datasets.text_embedding` |

Order: ratings stable-sorted by timestamp alone, so ratings of the same second keep
their order in the file (`u.data`'s order; RecBole's `ml-100k.inter` is `u.data` line for
line). That is the convention of every public MovieLens-100k benchmark: sorting ties by
(user, item) instead made the largest item id a user's "last" film in 415 of 943 users,
and ids are strongly anti-correlated with popularity. Uploads and watches are merged by
`ts` (an upload's ts is never equal to a watch's: watch times are whole seconds, upload
times end in 999 ms). Ratings within the same second keep the file order, which also
decides `context_video_id` among them.

Release year: the `release_year` column when it is four digits, else a trailing
`(YYYY)` in the title (item 1412 has year `V` and the year in its title), else unknown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plum.config import load_section
from streams.contracts.schema import UploadEvent, WatchEvent
from streams.datasets.text_embedding import embed_labels, embed_texts

INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
USER_FILE = "ml-100k.user"
REQUIRED_FILES = (INTER_FILE, ITEM_FILE)

MAX_STARS = 5.0
MAX_TIE = 9_999  # the event id writes Rating.tie in 4 digits, so that text order is its order
CHANNEL = "movielens-100k"
EMBEDDING_DECIMALS = 6  # keeps an upload ~1 KB smaller; norms stay within 1e-5 of 1

KIND_UPLOAD = "upload"
KIND_WATCH = "watch"


class MovieLensFormatError(ValueError):
    """A MovieLens file that does not have the expected columns or values."""


@dataclass(frozen=True)
class MovieLensConfig:
    """`[movielens]` of the config file."""

    duration_s: float = 6000.0
    # `text` has the simulator's text width, so both sources fit one `embedding_dims`.
    text_dim: int = 32
    genre_dim: int = 16
    seed: int = 0
    id_prefix: str = "ml100k"
    surface: str = "movielens"

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {self.duration_s}")
        if self.text_dim < 1 or self.genre_dim < 1:
            raise ValueError(
                f"embedding dims must be >= 1, got text={self.text_dim} genre={self.genre_dim}"
            )
        if not self.id_prefix:
            raise ValueError("id_prefix must not be empty")


def load_movielens_config(path: Path | str | None = None, **overrides) -> MovieLensConfig:
    """`[movielens]` of the TOML at `path` (default: $PLUM_CONFIG or configs/demo.toml)."""
    return load_section(MovieLensConfig, path, "movielens", **overrides)


@dataclass(frozen=True)
class Movie:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Rating:
    user_id: str
    item_id: str
    stars: float
    timestamp: int  # unix seconds
    # This rating's place among the same user's ratings of the same second, in file order
    # (0 for the first). The watch's event id carries it (see the module docstring).
    tie: int = 0


@dataclass(frozen=True)
class MovieLens:
    movies: tuple[Movie, ...]  # by item id (numeric order)
    ratings: tuple[Rating, ...]  # in timeline order, see `rating_order_key`
    user_ids: tuple[str, ...]  # from the user file when present, else from the ratings

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(m.item_id for m in self.movies)


@dataclass(frozen=True)
class TimelineRecord:
    """One event of the merged timeline with the topic kind and record key it goes under."""

    kind: str  # KIND_UPLOAD or KIND_WATCH
    key: str  # video_id for uploads, user_id for watches (the topics' keys)
    event: UploadEvent | WatchEvent

    @property
    def ts(self) -> int:
        return self.event.ts


# ---------------------------------------------------------------------------- parsing


def has_files(directory: Path | str) -> bool:
    d = Path(directory)
    return all((d / name).is_file() and (d / name).stat().st_size > 0 for name in REQUIRED_FILES)


def read_atomic(path: Path | str) -> tuple[tuple[str, ...], list[list[str]]]:
    """A RecBole atomic file: (column names without their `:type`, rows of raw strings)."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n")
        if not header:
            raise MovieLensFormatError(f"{path}: empty file, expected a typed header line")
        names = tuple(col.split(":", 1)[0] for col in header.split("\t"))
        rows = []
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            row = line.split("\t")
            if len(row) != len(names):
                raise MovieLensFormatError(
                    f"{path}:{lineno}: {len(row)} columns, header has {len(names)} ({', '.join(names)})"
                )
            rows.append(row)
    return names, rows


def _columns(path: Path, names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    missing = [w for w in wanted if w not in names]
    if missing:
        raise MovieLensFormatError(f"{path}: missing columns {missing}; has {list(names)}")
    return [list(names).index(w) for w in wanted]


def natural_key(token: str) -> tuple[int, int, str]:
    """Numeric ids sort as numbers ("2" < "10"), anything else after them as text."""
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def rating_order_key(r: Rating) -> int:
    """Timeline order: the timestamp alone. Sort with a stable sort (`sorted`,
    `list.sort`) so ratings of the same second keep their file order."""
    return r.timestamp


_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def parse_year(raw: str, title: str) -> int | None:
    raw = raw.strip()
    if len(raw) == 4 and raw.isdigit():
        return int(raw)
    m = _TITLE_YEAR.search(title)
    return int(m.group(1)) if m else None


def read_movies(path: Path | str) -> tuple[Movie, ...]:
    path = Path(path)
    names, rows = read_atomic(path)
    i_id, i_title = _columns(path, names, ("item_id", "movie_title"))
    i_year = names.index("release_year") if "release_year" in names else None
    i_class = names.index("class") if "class" in names else None
    movies: dict[str, Movie] = {}
    for row in rows:
        item_id, title = row[i_id].strip(), row[i_title].strip()
        if not item_id:
            raise MovieLensFormatError(f"{path}: empty item_id in row {row!r}")
        if item_id in movies:
            raise MovieLensFormatError(f"{path}: item_id {item_id!r} appears twice")
        year = parse_year(row[i_year] if i_year is not None else "", title)
        genres = tuple(row[i_class].split()) if i_class is not None else ()
        movies[item_id] = Movie(item_id=item_id, title=title, year=year, genres=genres)
    return tuple(sorted(movies.values(), key=lambda m: natural_key(m.item_id)))


def read_ratings(path: Path | str) -> tuple[Rating, ...]:
    """Ratings in timeline order: stable-sorted by timestamp, ties in file order."""
    path = Path(path)
    names, rows = read_atomic(path)
    i_user, i_item, i_rating, i_ts = _columns(
        path, names, ("user_id", "item_id", "rating", "timestamp")
    )
    ratings = []
    ties: Counter[tuple[str, int]] = Counter()  # (user, second) -> ratings read so far
    for row in rows:
        try:
            stars = float(row[i_rating])
            ts_float = float(row[i_ts])
        except ValueError:
            raise MovieLensFormatError(
                f"{path}: non-numeric rating/timestamp in row {row!r}"
            ) from None
        if not 0.0 < stars <= MAX_STARS:
            raise MovieLensFormatError(
                f"{path}: rating {stars} outside (0, {MAX_STARS}] in row {row!r}"
            )
        if ts_float < 0 or not ts_float.is_integer():
            raise MovieLensFormatError(f"{path}: timestamp {row[i_ts]!r} is not whole unix seconds")
        user, ts = row[i_user].strip(), int(ts_float)
        tie = ties[(user, ts)]
        if tie > MAX_TIE:
            raise MovieLensFormatError(
                f"{path}: user {user} has more than {MAX_TIE + 1} ratings at timestamp {ts}"
            )
        ties[(user, ts)] += 1
        ratings.append(Rating(user, row[i_item].strip(), stars, ts, tie))
    ratings.sort(key=rating_order_key)
    return tuple(ratings)


def read_user_ids(path: Path | str) -> tuple[str, ...]:
    path = Path(path)
    names, rows = read_atomic(path)
    (i_user,) = _columns(path, names, ("user_id",))
    return tuple(sorted({row[i_user].strip() for row in rows}, key=natural_key))


def load(directory: Path | str) -> MovieLens:
    """Parse a fetched MovieLens-100k directory. Every rated item must be in the item file."""
    d = Path(directory)
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} is missing; fetch with fetch-movielens-100k {d}")
    movies = read_movies(d / ITEM_FILE)
    ratings = read_ratings(d / INTER_FILE)
    known = {m.item_id for m in movies}
    unknown = sorted({r.item_id for r in ratings} - known, key=natural_key)
    if unknown:
        raise MovieLensFormatError(f"{d / INTER_FILE}: items {unknown[:10]} are not in {ITEM_FILE}")
    if (d / USER_FILE).is_file():
        users = read_user_ids(d / USER_FILE)
    else:
        users = tuple(sorted({r.user_id for r in ratings}, key=natural_key))
    return MovieLens(movies=movies, ratings=ratings, user_ids=users)


# ---------------------------------------------------------------------------- conversion


def video_id(item_id: str, cfg: MovieLensConfig) -> str:
    return f"{cfg.id_prefix}-m{item_id}"


def user_id(raw_user_id: str, cfg: MovieLensConfig) -> str:
    return f"{cfg.id_prefix}-u{raw_user_id}"


def watch_ratio(stars: float) -> float:
    """Stars to the fraction of the film watched: r / 5, so 5 stars is a full watch."""
    return min(1.0, max(0.0, stars / MAX_STARS))


def satisfaction(stars: float) -> float:
    """Stars to a survey answer in [0, 1]: 1 star -> 0, 5 stars -> 1."""
    return min(1.0, max(0.0, (stars - 1.0) / (MAX_STARS - 1.0)))


def description(movie: Movie) -> str:
    parts = []
    if movie.year is not None:
        parts.append(f"Released {movie.year}.")
    if movie.genres:
        parts.append(f"Genres: {', '.join(movie.genres)}.")
    return " ".join(parts)


def item_text(movie: Movie) -> str:
    """What a text encoder would read for the item: title and description."""
    return f"{movie.title}. {description(movie)}".strip()


def content_embeddings(movies: Sequence[Movie], cfg: MovieLensConfig) -> dict[str, np.ndarray]:
    """Named embeddings, each `[len(movies), dim]`, rows L2-normalised (see text_embedding)."""
    return {
        "text": embed_texts([item_text(m) for m in movies], cfg.text_dim, cfg.seed),
        "genre": embed_labels([m.genres for m in movies], cfg.genre_dim, cfg.seed),
    }


def watch_events(ratings: Sequence[Rating], cfg: MovieLensConfig) -> Iterator[WatchEvent]:
    """One watch per rating, in the order given (timeline order from `read_ratings`)."""
    previous: dict[str, str] = {}
    for r in ratings:
        ratio = watch_ratio(r.stars)
        yield WatchEvent(
            event_id=f"{cfg.id_prefix}-{r.user_id}-{r.timestamp}-{r.tie:04d}-{r.item_id}",
            user_id=user_id(r.user_id, cfg),
            video_id=video_id(r.item_id, cfg),
            ts=r.timestamp * 1000,
            watch_time_s=round(ratio * cfg.duration_s, 3),
            video_duration_s=cfg.duration_s,
            clicked=True,
            surface=cfg.surface,
            context_video_id=previous.get(r.user_id),
            satisfaction=satisfaction(r.stars),
        )
        previous[r.user_id] = video_id(r.item_id, cfg)


def upload_times_ms(ratings: Sequence[Rating], item_ids: Sequence[str]) -> dict[str, int]:
    """Each item's upload time: first rating minus 1 ms; unrated items after the last rating."""
    first: dict[str, int] = {}
    for r in ratings:
        ts = r.timestamp * 1000
        if r.item_id not in first or ts < first[r.item_id]:
            first[r.item_id] = ts
    last = max((r.timestamp * 1000 for r in ratings), default=0)
    return {i: first[i] - 1 if i in first else last + 1 for i in item_ids}


def upload_events(
    movies: Sequence[Movie],
    upload_ts: dict[str, int],
    embeddings: dict[str, np.ndarray],
    cfg: MovieLensConfig,
) -> list[UploadEvent]:
    """One upload per movie, in the order of `movies`; `embeddings[name][i]` belongs to movies[i]."""
    out = []
    for i, m in enumerate(movies):
        vectors = {
            name: tuple(round(float(x), EMBEDDING_DECIMALS) for x in matrix[i])
            for name, matrix in embeddings.items()
        }
        out.append(
            UploadEvent(
                video_id=video_id(m.item_id, cfg),
                ts=upload_ts[m.item_id],
                title=m.title,
                description=description(m),
                channel=CHANNEL,
                topics=m.genres,
                duration_s=cfg.duration_s,
                embeddings=vectors,
            )
        )
    return out


def catalogue(data: MovieLens, cfg: MovieLensConfig = MovieLensConfig()) -> list[UploadEvent]:
    """Every movie's upload exactly as the pipeline publishes it, in item order: the
    embeddings fitted on every movie of the file and rounded as on the topic. Whoever
    needs the items' vectors (the tokenizer, offline evaluations) reads them here, so
    they train on what the SID service will see."""
    embeddings = content_embeddings(data.movies, cfg)
    return upload_events(data.movies, upload_times_ms(data.ratings, data.item_ids), embeddings, cfg)


def timeline(
    data: MovieLens, cfg: MovieLensConfig = MovieLensConfig(), limit: int | None = None
) -> list[TimelineRecord]:
    """Uploads and watches merged in ts order. `limit` cuts the timeline just after its
    `limit`-th watch: the first `limit` watches and the uploads before the last of them
    (every kept watch has its upload; `limit=0` keeps nothing).

    Embeddings are always fitted on every movie in the file, so an item's vectors do not
    depend on `limit`.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records = [TimelineRecord(KIND_UPLOAD, u.video_id, u) for u in catalogue(data, cfg)]
    records += [TimelineRecord(KIND_WATCH, w.user_id, w) for w in watch_events(data.ratings, cfg)]
    # Stable sort: watches keep their rating order within a millisecond; uploads sort
    # before watches at an equal ts and among themselves by item id (list order).
    records.sort(key=lambda rec: (rec.ts, 0 if rec.kind == KIND_UPLOAD else 1))
    if limit is None:
        return records
    end, watches = 0, 0
    for i, rec in enumerate(records):
        if watches == limit:
            break
        if rec.kind == KIND_WATCH:
            watches += 1
            end = i + 1
    return records[:end]
