"""A small MovieLens-100k directory in the layout `streams.datasets.movielens` reads, for
tests that need real files without the real data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streams.datasets import movielens as ml

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
USER_HEADER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"


def write_movielens_sample(
    d: Path,
    items: Sequence[tuple[str, str, str, str]],
    ratings: Sequence[tuple[str, str, str, str]],
    users: Sequence[str] | None = None,
    inter_header: str | None = None,
) -> Path:
    """Write `d` with the interactions file (ratings as (user, item, stars, unix seconds),
    columns in `inter_header`'s order), the items file ((id, title, year, genres)) and,
    when `users` is given, the users file; returns `d`."""
    d.mkdir(parents=True, exist_ok=True)
    header = inter_header or INTER_HEADER
    order = [c.split(":")[0] for c in header.split("\t")]
    pos = {"user_id": 0, "item_id": 1, "rating": 2, "timestamp": 3}
    lines = [header] + ["\t".join(r[pos[c]] for c in order) for r in ratings]
    (d / ml.INTER_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    item_lines = [ITEM_HEADER] + ["\t".join(row) for row in items]
    (d / ml.ITEM_FILE).write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    if users is not None:
        user_lines = [USER_HEADER] + [f"{u}\t30\tF\tother\t00000" for u in users]
        (d / ml.USER_FILE).write_text("\n".join(user_lines) + "\n", encoding="utf-8")
    return d
