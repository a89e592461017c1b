"""The standard MovieLens-100k protocol, pinned on the real file.

Ratings are stable-sorted on the timestamp alone (same-second ratings keep u.data's
order), per user the last rating is test and the second to last validation, every one of
the 1,682 items is ranked, nothing already seen is masked, and popularity counts every
training interaction with ties to the smaller item id. The popularity Recall@10 is
recomputed here by an independent numpy implementation straight from the file's lines.

The data is fetched with the shared script into build/data/ml-100k (git-ignored); the
tests skip only when it cannot be fetched (no network), and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.datasets import cli as data_cli
from streams.datasets import movielens as ml
from trainer.eval import evaluate, fit_baselines
from trainer.movielens_examples import leave_last_out_split

DATA_DIR = Path(__file__).resolve().parents[2] / "build" / "data" / "ml-100k"
CFG = ml.MovieLensConfig()
# Users whose last second holds several ratings: (user, test item, validation item) in
# u.data's order. A (timestamp, user, item) sort made the largest id of that second the
# test item instead (user 3: 320, user 5: 457, user 12: 735).
TIED_LAST_SECOND = [(3, 181, 317), (5, 395, 442), (12, 238, 88)]


@pytest.fixture(scope="module")
def split():
    try:
        data_cli.fetch_movielens(DATA_DIR)
    except data_cli.DataImportError as exc:
        pytest.skip(f"MovieLens-100k could not be fetched, protocol not checked: {exc}")
    data = ml.load(DATA_DIR)
    return data, leave_last_out_split(data.ratings, CFG, history_len=1)


def _item(video_id: str) -> int:
    return int(video_id.rsplit("-m", 1)[1])


def test_every_user_has_one_test_and_one_validation_rating(split):
    data, s = split
    assert len(s.test) == len(s.validation) == 943
    assert len({e.user_id for e in s.test}) == 943
    assert len(s.train_ratings) == 100_000 - 2 * 943
    assert len(s.held) == 2 * 943
    assert len(data.movies) == 1682


@pytest.mark.parametrize(("user", "test_item", "valid_item"), TIED_LAST_SECOND)
def test_same_second_ties_keep_the_file_order(split, user, test_item, valid_item):
    _, s = split
    uid = ml.user_id(str(user), CFG)
    (test,) = [e for e in s.test if e.user_id == uid]
    (valid,) = [e for e in s.validation if e.user_id == uid]
    assert (_item(test.target_video_id), _item(valid.target_video_id)) == (test_item, valid_item)
    assert test.ts == valid.ts  # both in the user's last second


def numpy_popularity_recall_at_10(path: Path) -> tuple[float, int]:
    """Independent of the library: (R@10 of popularity, users) from the raw file."""
    raw = np.loadtxt(path, skiprows=1, dtype=np.int64, usecols=(0, 1, 3))
    user, item, ts = raw[:, 0], raw[:, 1], raw[:, 2]
    order = np.argsort(ts, kind="stable")  # ties keep the file's order
    user, item = user[order], item[order]
    by_user = np.argsort(user, kind="stable")  # each user's ratings, still in time order
    user, item = user[by_user], item[by_user]
    last = np.r_[user[1:] != user[:-1], True]  # each user's last rating
    second_last = np.r_[last[1:], False]
    train = ~(last | second_last)
    counts = np.bincount(item[train], minlength=item.max() + 1)[1:]  # items 1..N
    top10 = np.lexsort((np.arange(1, counts.size + 1), -counts))[:10] + 1
    hits = np.isin(item[last], top10)
    return float(hits.mean()), int(last.sum())


def test_popularity_recall_matches_an_independent_numpy_count(split):
    data, s = split
    expected, users = numpy_popularity_recall_at_10(DATA_DIR / ml.INTER_FILE)
    assert users == 943
    cands = frozenset(ml.video_id(m.item_id, CFG) for m in data.movies)
    interactions = [ml.video_id(r.item_id, CFG) for r in s.train_ratings]
    rankers = fit_baselines(s.train, cands, interactions=interactions)
    report = evaluate({"popularity": rankers["popularity"]}, s.test, candidates=cands)
    assert report["num_examples"] == 943 and report["num_skipped_no_sid"] == 0
    assert report["rankers"]["popularity"]["recall@10"] == pytest.approx(expected, abs=1e-12)
    assert len(rankers["popularity"].order) == 1682  # full ranking over every item
