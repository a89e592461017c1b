"""No validation or test interaction reaches the tokenizer, CPT or SFT data of a MovieLens
run, checked by identity: a rating is (user, film) (nobody rates a film twice), and every
interaction each training input carries is named and compared with the held-out ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.trainer_quality import movielens_inputs
from streams.datasets import movielens as ml
from tests.movielens_support import write_movielens_sample

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test.toml"
ITEMS = [(str(i), f"Film {i}", "1995", "Drama Comedy" if i % 2 else "Action") for i in range(1, 13)]
# 5 users x 7 ratings, 5 stars so every consecutive pair is a tokenizer pair; each user
# rates their last three films in one second, in an order that is not the id order.
RATINGS = [
    (str(u), str((u * 5 + k * 7) % 12 + 1), "5", str(1000 + 10 * k if k < 4 else 1100 + u))
    for u in range(1, 6)
    for k in range(7)
]


def write_sample(d: Path) -> Path:
    return write_movielens_sample(d, ITEMS, RATINGS)


@pytest.fixture
def inputs(tmp_path):
    return movielens_inputs(write_sample(tmp_path / "ml"), CONFIG, history_len=50)


def test_held_out_interactions_are_each_users_last_two_in_file_order(inputs):
    held = inputs.split.held
    assert len(held) == 10
    scored = {(e.user_id, e.target_video_id) for e in inputs.split.test + inputs.split.validation}
    assert scored == held
    cfg = ml.load_movielens_config(CONFIG)
    last = {(ml.user_id(u, cfg), ml.video_id(i, cfg)) for u, i, *_ in RATINGS[6::7]}
    assert {(e.user_id, e.target_video_id) for e in inputs.split.test} == last


def test_no_held_out_interaction_reaches_the_tokenizer_cpt_or_sft_data(inputs):
    held = inputs.split.held
    used = {
        "tokenizer pairs": {(u, v) for u, a, b in inputs.tokenizer_pairs for v in (a, b)},
        "CPT watches": {(w.user_id, w.video_id) for w in inputs.cpt_watches},
        "SFT targets": {(e.user_id, e.target_video_id) for e in inputs.split.train},
        "SFT histories": {(e.user_id, h.video_id) for e in inputs.split.train for h in e.history},
        "SFT contexts": {(e.user_id, e.context_video_id) for e in inputs.split.train},
        "baseline interactions": {(r.user_id, r.item_id) for r in inputs.split.train_ratings},
    }
    cfg = ml.load_movielens_config(CONFIG)
    used["baseline interactions"] = {
        (ml.user_id(u, cfg), ml.video_id(i, cfg)) for u, i in used["baseline interactions"]
    }
    for name, interactions in used.items():
        assert interactions, f"{name}: empty, the check would prove nothing"
        assert not interactions & held, f"{name} carry held-out interactions"
    # and together they are every training rating: nothing was dropped to pass the check
    assert set().union(*used.values()) == used["baseline interactions"]
    assert len(used["baseline interactions"]) == len(RATINGS) - len(held)


def test_split_one_rating_earlier_tests_the_validation_film_and_uses_no_newest_rating(tmp_path):
    directory = write_sample(tmp_path / "ml")
    standard = movielens_inputs(directory, CONFIG, history_len=50)
    earlier = movielens_inputs(directory, CONFIG, history_len=50, drop_newest=1)
    real_validation = {(e.user_id, e.target_video_id) for e in standard.split.validation}
    assert {(e.user_id, e.target_video_id) for e in earlier.split.test} == real_validation
    newest = {(e.user_id, e.target_video_id) for e in standard.split.test}
    used = {(e.user_id, e.target_video_id) for e in earlier.split.examples}
    used |= {(e.user_id, h.video_id) for e in earlier.split.examples for h in e.history}
    used |= {(w.user_id, w.video_id) for w in earlier.cpt_watches}
    assert used and not used & newest
    assert len(earlier.split.train) == len(standard.split.train) - 5  # one per user
