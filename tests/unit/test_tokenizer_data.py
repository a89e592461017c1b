"""Tokenizer training data: MovieLens through the pipeline's own reader and embeddings,
uploads to item matrices, id pairs to row pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streams.contracts.schema import UploadEvent
from streams.datasets import movielens as ml
from tests.movielens_support import write_movielens_sample
from tokenizer.data import items_from_uploads, load_items, pair_rows, read_movielens

ITEMS = [
    ("1", "Toy Story", "1995", "Animation Children's Comedy"),
    ("2", "Toy Story 2", "1999", "Animation Children's Comedy"),
    ("3", "Heat", "1995", "Action Crime Thriller"),
    ("4", "Casino", "1995", "Drama"),
]
# user, item, stars, unix seconds (not in time order)
RATINGS = [
    ("1", "2", "5", "200"),
    ("1", "1", "4", "100"),
    ("1", "3", "2", "300"),  # below 4 stars: not part of any pair
    ("1", "4", "4", "400"),
    ("2", "3", "5", "100"),
    ("2", "4", "5", "150"),
]
CFG = ml.MovieLensConfig(text_dim=8, genre_dim=6)


def write_sample(d: Path) -> Path:
    return write_movielens_sample(d, ITEMS, RATINGS)


def test_movielens_items_are_the_published_uploads_and_their_embeddings(tmp_path):
    d = write_sample(tmp_path / "ml")
    items = read_movielens(d, CFG)
    published = ml.catalogue(ml.load(d), CFG)
    assert items.ids == tuple(u.video_id for u in published)
    for name in ("text", "genre"):
        expected = np.array([u.embeddings[name] for u in published], np.float32)
        np.testing.assert_array_equal(items.embeddings[name], expected)
    assert load_items(f"movielens:{d}", movielens_cfg=CFG).ids == items.ids


def test_movielens_pairs_are_consecutive_well_rated_films_per_user(tmp_path):
    items = read_movielens(write_sample(tmp_path / "ml"), CFG)
    row = {v: i for i, v in enumerate(items.ids)}
    named = {tuple(sorted((items.ids[a], items.ids[b]))) for a, b in items.pairs.tolist()}
    # user 1 (>= 4 stars, by time): m1, m2, m4 -> (m1, m2), (m2, m4); user 2: (m3, m4)
    assert named == {
        ("ml100k-m1", "ml100k-m2"),
        ("ml100k-m2", "ml100k-m4"),
        ("ml100k-m3", "ml100k-m4"),
    }
    assert all(a < b for a, b in items.pairs.tolist()) and len(row) == len(ITEMS)


def _upload(video_id: str, text: tuple[float, ...]) -> UploadEvent:
    return UploadEvent(video_id, 0, "t", "", "ch", ("x",), 60.0, {"text": text})


def test_a_reupload_replaces_the_embedding_and_keeps_its_place():
    ids, emb = items_from_uploads(
        [_upload("a", (1.0, 0.0)), _upload("b", (0.0, 1.0)), _upload("a", (0.5, 0.5))]
    )
    assert ids == ("a", "b")
    np.testing.assert_array_equal(emb["text"], [[0.5, 0.5], [0.0, 1.0]])


def test_items_with_another_embedding_layout_are_left_out():
    ids, emb = items_from_uploads(
        [_upload("a", (1.0, 0.0)), _upload("b", (0.0, 1.0)), _upload("c", (1.0, 0.0, 0.0))]
    )
    assert ids == ("a", "b") and emb["text"].shape == (2, 2)


def test_pair_rows_are_distinct_known_and_never_self_pairs():
    rows = pair_rows([("a", "b"), ("a", "b"), ("b", "a"), ("a", "a"), ("a", "zz")], ["a", "b"])
    assert rows.tolist() == [[0, 1], [1, 0]]
    assert pair_rows([], ["a"]).shape == (0, 2)
