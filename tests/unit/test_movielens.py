"""MovieLens parsing, rating -> watch mapping, timeline order and content embeddings,
on a tiny synthetic sample written in the RecBole atomic format of the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.contracts.schema import UploadEvent, WatchEvent, decode_upload, decode_watch, encode
from streams.datasets import cli as data_cli
from streams.datasets import movielens as ml
from streams.datasets.text_embedding import embed_labels, embed_texts
from tests.movielens_support import write_movielens_sample

ITEMS = [
    ("1", "Toy Story", "1995", "Animation Children's Comedy"),
    ("2", "Toy Story 2", "1999", "Animation Children's Comedy"),
    ("3", "Heat", "1995", "Action Crime Thriller"),
    (
        "10",
        "Land Before Time III: The Time of the Great Giving (1995)",
        "V",
        "Animation Children's",
    ),
    ("11", "unkonwn", "unkonwn", "unknown"),
    ("12", "Never Rated", "1990", "Drama"),
]
# user, item, rating, timestamp (seconds); deliberately not in time order, with ties in
# an order no (user, item) sort would give: user 2 rated item 10 before item 2 in second 1000.
RATINGS = [
    ("7", "3", "4", "1000"),
    ("2", "1", "5", "900"),
    ("2", "10", "2", "1000"),
    ("10", "1", "3", "1000"),
    ("2", "2", "1", "1000"),
    ("7", "1", "5", "1200"),
    ("10", "11", "3", "1300"),
]
USERS = ["2", "7", "10", "99"]  # user 99 rated nothing


def write_sample(d: Path, items=ITEMS, ratings=RATINGS, inter_header=None) -> Path:
    return write_movielens_sample(d, items, ratings, USERS, inter_header)


@pytest.fixture
def sample(tmp_path) -> ml.MovieLens:
    return ml.load(write_sample(tmp_path / "ml"))


CFG = ml.MovieLensConfig(text_dim=8, genre_dim=6)


def watches_of(records) -> list[WatchEvent]:
    return [r.event for r in records if r.kind == ml.KIND_WATCH]


def uploads_of(records) -> list[UploadEvent]:
    return [r.event for r in records if r.kind == ml.KIND_UPLOAD]


# ---------------------------------------------------------------------------- parsing


def test_sample_parses_counts_and_stable_sorts_ratings_by_timestamp_alone(sample):
    assert sample.user_ids == ("2", "7", "10", "99")
    assert sample.item_ids == ("1", "2", "3", "10", "11", "12")
    got = [(r.timestamp, r.user_id, r.item_id) for r in sample.ratings]
    # Same second: the file's order (the public benchmarks' convention), not ids.
    assert got == [
        (900, "2", "1"),
        (1000, "7", "3"),
        (1000, "2", "10"),
        (1000, "10", "1"),
        (1000, "2", "2"),
        (1200, "7", "1"),
        (1300, "10", "11"),
    ]


def test_columns_are_found_by_name_not_position(tmp_path):
    header = "timestamp:float\trating:float\titem_id:token\tuser_id:token"
    data = ml.load(write_sample(tmp_path / "ml", inter_header=header))
    assert data.ratings[0] == ml.Rating(user_id="2", item_id="1", stars=5.0, timestamp=900)


def test_release_year_falls_back_to_title_then_unknown(sample):
    years = {m.item_id: m.year for m in sample.movies}
    assert years["1"] == 1995
    assert years["10"] == 1995  # year column "V", year taken from "(1995)" in the title
    assert years["11"] is None


def test_rating_outside_one_to_five_is_a_format_error(tmp_path):
    d = write_sample(tmp_path / "ml", ratings=[("1", "1", "6", "100")])
    with pytest.raises(ml.MovieLensFormatError, match="rating 6.0"):
        ml.load(d)


def test_rating_of_unknown_item_is_a_format_error(tmp_path):
    d = write_sample(tmp_path / "ml", ratings=[("1", "404", "3", "100")])
    with pytest.raises(ml.MovieLensFormatError, match="404"):
        ml.load(d)


def test_missing_column_names_the_column(tmp_path):
    d = write_sample(tmp_path / "ml")
    (d / ml.INTER_FILE).write_text("user_id:token\titem_id:token\trating:float\n1\t1\t3\n")
    with pytest.raises(ml.MovieLensFormatError, match="timestamp"):
        ml.load(d)


def test_wrong_column_count_names_the_line(tmp_path):
    d = write_sample(tmp_path / "ml")
    with (d / ml.INTER_FILE).open("a") as fh:
        fh.write("1\t1\t3\n")
    with pytest.raises(ml.MovieLensFormatError, match=r"ml-100k.inter:9: 3 columns"):
        ml.load(d)


# ---------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    "stars,ratio,sat", [(1, 0.2, 0.0), (2, 0.4, 0.25), (3, 0.6, 0.5), (4, 0.8, 0.75), (5, 1.0, 1.0)]
)
def test_stars_map_to_watch_ratio_and_satisfaction(stars, ratio, sat):
    assert ml.watch_ratio(stars) == pytest.approx(ratio)
    assert ml.satisfaction(stars) == pytest.approx(sat)


def test_watch_fields_follow_the_documented_mapping(sample):
    watches = list(ml.watch_events(sample.ratings, CFG))
    assert len(watches) == len(RATINGS)
    first = watches[0]
    assert first == WatchEvent(
        event_id="ml100k-2-900-0000-1",
        user_id="ml100k-u2",
        video_id="ml100k-m1",
        ts=900_000,
        watch_time_s=6000.0,
        video_duration_s=6000.0,
        clicked=True,
        surface="movielens",
        context_video_id=None,
        satisfaction=1.0,
    )
    one_star = next(w for w in watches if w.event_id == "ml100k-2-1000-0001-2")  # 1 star
    assert one_star.watch_ratio == pytest.approx(0.2)
    assert one_star.satisfaction == 0.0
    assert all(w.clicked for w in watches)
    assert len({w.event_id for w in watches}) == len(watches)


def test_ratings_count_their_place_among_the_users_ratings_of_the_same_second(sample):
    ties = {(r.user_id, r.item_id): r.tie for r in sample.ratings}
    # user 2 rated item 10, then item 2, in second 1000; every other rating is alone
    assert ties.pop(("2", "10")) == 0 and ties.pop(("2", "2")) == 1
    assert set(ties.values()) == {0}


def test_event_ids_of_one_users_same_second_sort_in_file_order(tmp_path):
    # in file order 3, 10, 2: text order of the item ids would give 10, 2, 3
    ratings = [("5", "3", "3", "700"), ("5", "10", "4", "700"), ("5", "2", "5", "700")]
    data = ml.load(write_sample(tmp_path / "ml", ratings=ratings))
    watches = sorted(ml.watch_events(data.ratings, CFG), key=lambda w: (w.ts, w.event_id))
    assert [w.video_id for w in watches] == ["ml100k-m3", "ml100k-m10", "ml100k-m2"]


def test_the_flink_timeline_builds_the_splits_histories_from_the_replayed_watches(tmp_path):
    """The stream and the split agree: the Flink job's reference, fed the watches in the
    import's order, writes each rating's history as trainer.movielens_examples does, ties
    in the same second included (the job orders them by event id)."""
    from streams.flink.job import FlinkConfig
    from streams.flink.reference import RefParams, run_reference
    from trainer.movielens_examples import movielens_examples

    ratings = [
        ("5", "3", "3", "700"),
        ("5", "10", "4", "700"),
        ("5", "2", "5", "700"),
        ("5", "12", "2", "760"),
        ("5", "1", "4", "760"),
        ("5", "11", "1", "800"),
        ("2", "12", "4", "700"),
        ("2", "3", "4", "700"),
    ]
    data = ml.load(write_sample(tmp_path / "ml", ratings=ratings))
    watches = list(ml.watch_events(data.ratings, CFG))
    records = [(0, offset, encode(w)) for offset, w in enumerate(watches)]
    params = RefParams.from_flink_config(
        FlinkConfig(history_len=3, w_ratio=0.0, w_satisfaction=0.0)
    )
    stream = run_reference(records, params, 10**13, None, "watches").examples
    split = movielens_examples(data.ratings, CFG, history_len=3)
    assert len(split) == len(ratings) - 2  # a user's first rating has no history
    for example in split:
        assert [h.video_id for h in stream[example.event_id].history] == [
            h.video_id for h in example.history
        ], example.event_id


def test_context_is_the_users_previous_rated_item(sample):
    ctx = {
        (w.user_id, w.video_id): w.context_video_id for w in ml.watch_events(sample.ratings, CFG)
    }
    assert ctx[("ml100k-u2", "ml100k-m1")] is None
    assert ctx[("ml100k-u2", "ml100k-m10")] == "ml100k-m1"
    assert ctx[("ml100k-u2", "ml100k-m2")] == "ml100k-m10"  # same second: file order decides
    assert ctx[("ml100k-u7", "ml100k-m1")] == "ml100k-m3"
    assert ctx[("ml100k-u10", "ml100k-m11")] == "ml100k-m1"


def test_upload_carries_title_genres_year_and_both_embeddings(sample):
    uploads = {u.video_id: u for u in uploads_of(ml.timeline(sample, CFG))}
    toy = uploads["ml100k-m1"]
    assert toy.title == "Toy Story"
    assert toy.topics == ("Animation", "Children's", "Comedy")
    assert toy.description == "Released 1995. Genres: Animation, Children's, Comedy."
    assert toy.channel == ml.CHANNEL
    assert toy.duration_s == CFG.duration_s
    assert set(toy.embeddings) == {"text", "genre"}
    assert len(toy.embeddings["text"]) == CFG.text_dim
    assert len(toy.embeddings["genre"]) == CFG.genre_dim
    assert uploads["ml100k-m11"].description == "Genres: unknown."


# ---------------------------------------------------------------------------- ordering


def test_timeline_is_in_ts_order_and_every_upload_precedes_its_first_watch(sample):
    records = ml.timeline(sample, CFG)
    ts = [r.ts for r in records]
    assert ts == sorted(ts)
    seen_uploads = set()
    first_watch = {}
    for r in records:
        if r.kind == ml.KIND_UPLOAD:
            seen_uploads.add(r.event.video_id)
        else:
            assert r.event.video_id in seen_uploads, f"watch {r.event.event_id} before its upload"
            first_watch.setdefault(r.event.video_id, r.ts)
    for u in uploads_of(records):
        if u.video_id in first_watch:
            assert u.ts == first_watch[u.video_id] - 1


def test_unrated_item_is_uploaded_after_the_last_rating(sample):
    records = ml.timeline(sample, CFG)
    assert records[-1].kind == ml.KIND_UPLOAD
    assert records[-1].event.video_id == "ml100k-m12"
    assert records[-1].ts == 1300_000 + 1


def test_keys_are_user_for_watches_and_video_for_uploads(sample):
    for r in ml.timeline(sample, CFG):
        expected = r.event.user_id if r.kind == ml.KIND_WATCH else r.event.video_id
        assert r.key == expected


@pytest.mark.parametrize("limit", [0, 1, 3, 5, len(RATINGS), 100])
def test_limit_cuts_after_the_nth_watch_and_keeps_needed_uploads(sample, limit):
    full = ml.timeline(sample, CFG)
    cut = ml.timeline(sample, CFG, limit=limit)
    watches = watches_of(cut)
    assert watches == watches_of(full)[:limit]
    assert cut == full[: len(cut)]
    if watches:
        assert cut[-1].kind == ml.KIND_WATCH
    uploaded = {u.video_id for u in uploads_of(cut)}
    assert {w.video_id for w in watches} <= uploaded


def test_same_input_gives_byte_identical_events(tmp_path):
    a = ml.timeline(ml.load(write_sample(tmp_path / "a")), CFG)
    b = ml.timeline(ml.load(write_sample(tmp_path / "b")), CFG)
    assert [encode(r.event) for r in a] == [encode(r.event) for r in b]


def test_every_event_passes_schema_validation(sample):
    for r in ml.timeline(sample, CFG):
        decode = decode_upload if r.kind == ml.KIND_UPLOAD else decode_watch
        assert decode(encode(r.event)) == r.event


# ---------------------------------------------------------------------------- embeddings


def test_content_embeddings_are_finite_normalised_and_shaped(sample):
    emb = ml.content_embeddings(sample.movies, CFG)
    assert set(emb) == {"text", "genre"}
    for name, dim in (("text", CFG.text_dim), ("genre", CFG.genre_dim)):
        m = emb[name]
        assert m.shape == (len(sample.movies), dim)
        assert np.isfinite(m).all()
        np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-9)


def test_uploaded_vectors_stay_normalised_after_rounding(sample):
    for u in uploads_of(ml.timeline(sample, CFG)):
        for vec in u.embeddings.values():
            assert abs(np.linalg.norm(vec) - 1.0) < 1e-4


def test_text_embedding_puts_a_sequel_closest_to_its_original():
    texts = ["Toy Story", "Toy Story 2", "Heat", "Casino", "Fargo", "Babe", "Jumanji"]
    m = embed_texts(texts, dim=4)
    sims = m[1:] @ m[0]
    assert int(np.argmax(sims)) == 0  # "Toy Story 2"


def test_embeddings_are_deterministic():
    texts = ["Star Wars", "Return of the Jedi", "Heat", "Casino", "Fargo"]
    np.testing.assert_array_equal(embed_texts(texts, 3), embed_texts(texts, 3))
    labels = [("Action",), ("Action", "Sci-Fi"), ("Drama",)]
    np.testing.assert_array_equal(embed_labels(labels, 5), embed_labels(labels, 5))


def test_genre_embedding_of_a_label_does_not_depend_on_the_corpus():
    a = embed_labels([("Drama",), ("Comedy",)], dim=8)
    b = embed_labels([("Western",), ("Drama",), ("Horror", "War")], dim=8)
    np.testing.assert_allclose(a[0], b[1])


def test_shared_genres_are_closer_than_disjoint_ones():
    m = embed_labels([("Action", "Thriller"), ("Action", "Crime"), ("Romance", "Musical")], dim=32)
    assert m[0] @ m[1] > m[0] @ m[2]


@pytest.mark.parametrize("texts", [["Only one"], ["a b", "c d"], ["", ""], []])
def test_tiny_or_empty_corpora_still_give_unit_rows_of_full_width(texts):
    m = embed_texts(texts, dim=16)
    assert m.shape == (len(texts), 16)
    assert np.isfinite(m).all()
    if texts:
        np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-9)


# ---------------------------------------------------------------------------- fetch / cli


def test_fetch_is_skipped_when_files_exist(tmp_path):
    d = write_sample(tmp_path / "ml")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    ran = tmp_path / "fetch-ran"
    script = tmp_path / "fetch"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    assert data_cli.fetch_movielens(d, script=script) is None
    assert not ran.exists(), "the fetch script ran although the files were there"
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before


def test_failed_fetch_reports_the_scripts_output(tmp_path):
    script = tmp_path / "fetch"
    script.write_text("#!/bin/sh\necho 'no network here' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(data_cli.DataImportError, match="exit 3.*no network here"):
        data_cli.fetch_movielens(tmp_path / "empty", script=script)


def test_cli_rejects_a_negative_limit(tmp_path, capsys):
    assert data_cli.movielens_import([str(tmp_path), "--limit", "-1"]) == 2
    assert "--limit" in capsys.readouterr().err
