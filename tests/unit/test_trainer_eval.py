"""Retrieval evaluation: metrics, baselines, splits, the model ranker, MovieLens examples."""

import dataclasses
import itertools
import math

import jax
import numpy as np
import pytest

from streams.contracts.schema import HistoryItem, SftExample
from streams.datasets.movielens import MovieLensConfig, Rating
from trainer.beam import score_sids
from trainer.config import TINY
from trainer.eval import (
    CooccurrenceBaseline,
    ModelRanker,
    PopularityBaseline,
    SidGenerator,
    candidate_ids,
    evaluate,
    evenly_spaced,
    fit_baselines,
    fresh_split,
    leave_last_out,
    ndcg_at_k,
    recall_at_k,
    scoring_split,
)
from trainer.model import init_params
from trainer.movielens_examples import movielens_examples
from trainer.prompt import SidLookup
from trainer.vocab import Vocab, train_text_tokenizer

HOUR_MS = 3_600_000


def ex(user, ts, target, history=(), ctx=None, eid=None):
    """An example at ts (ms); history video ids oldest first, one hour apart before ts."""
    n = len(history)
    items = tuple(
        HistoryItem(v, 0.5, 30.0, float(n - i)) for i, v in enumerate(history)
    )  # hours_since: n for the oldest, 1 for the newest
    return SftExample(eid or f"{user}-{ts}", user, items, ctx, target, 1.0, ts)


# ---------------------------------------------------------------------------- metrics


def test_recall_and_ndcg_hand_computed():
    ranked = [["a", "b", "c"], ["c", "a"], ["x"], ["d", "e", "f"]]
    targets = ["b", "c", "a", "f"]
    assert recall_at_k(ranked, targets, 1) == pytest.approx(1 / 4)  # only "c" at rank 0
    assert recall_at_k(ranked, targets, 2) == pytest.approx(2 / 4)
    assert recall_at_k(ranked, targets, 3) == pytest.approx(3 / 4)
    assert recall_at_k(ranked, targets, 10) == pytest.approx(3 / 4)
    assert ndcg_at_k(ranked, targets, 1) == pytest.approx(1 / 4)
    assert ndcg_at_k(ranked, targets, 2) == pytest.approx((1 / math.log2(3) + 1) / 4)
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((1 / math.log2(3) + 1 + 0.5) / 4)
    assert recall_at_k([], [], 5) == 0.0 and ndcg_at_k([], [], 5) == 0.0


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="k=0"):
        recall_at_k([["a"]], ["a"], 0)
    with pytest.raises(ValueError, match="2 rankings for 1 targets"):
        ndcg_at_k([["a"], ["b"]], ["a"], 1)


# ---------------------------------------------------------------------------- baselines


def test_popularity_counts_targets_breaks_ties_by_id_and_keeps_to_candidates():
    train = [ex("u", i, t) for i, t in enumerate(["b", "a", "c", "c", "a", "z", "z", "z"])]
    pop = PopularityBaseline.fit(train, candidates={"a", "b", "c", "d"})
    # z is the most popular target but has no SID; d was never a target (count 0, the tail)
    assert pop.order == ("a", "c", "b", "d")
    assert pop.rank(ex("x", 0, "a"), 2) == ["a", "c"]
    assert pop.rank_many([ex("x", 0, "a"), ex("y", 0, "b")], 9) == [["a", "c", "b", "d"]] * 2
    assert PopularityBaseline.fit(train).order == ("z", "a", "c", "b")


def _cowatch_train():
    """Many users watch x then y; c is the most popular target but never follows x."""
    train = [ex(f"u{i}", 10 * HOUR_MS, "y", history=["q", "x"], ctx="x") for i in range(3)]
    train += [ex(f"w{i}", 10 * HOUR_MS, "c", history=["q"]) for i in range(5)]
    return train


def test_cooccurrence_ranks_the_co_watched_item_first():
    cands = {"x", "y", "c", "q", "d"}
    train = _cowatch_train()
    co = CooccurrenceBaseline.fit(train, window=2, candidates=cands)
    pop = PopularityBaseline.fit(train, cands)
    query = ex("new", 20 * HOUR_MS, "y", history=["x"], ctx="x")
    assert pop.rank(query, 1) == ["c"]
    ranked = co.rank(query, 5)
    assert ranked[0] == "y"
    assert sorted(ranked) == sorted(cands)  # filled to k from popularity, candidates only
    assert co.rank_many([query], 3) == [ranked[:3]]
    again = CooccurrenceBaseline.fit(list(reversed(train)), window=2, candidates=cands)
    assert again.rank(query, 5) == ranked  # deterministic, whatever the input order


def test_cooccurrence_weights_recent_history_more():
    # a co-occurs with p, b with r equally often; the query watched a before b
    train = [ex(f"u{i}", 10 * HOUR_MS, "p", history=["a"]) for i in range(2)]
    train += [ex(f"v{i}", 10 * HOUR_MS, "r", history=["b"]) for i in range(2)]
    co = CooccurrenceBaseline.fit(train, window=3, candidates={"a", "b", "p", "r"})
    assert co.rank(ex("q", 20 * HOUR_MS, "?", history=["a", "b"]), 2) == ["r", "p"]
    assert co.rank(ex("q", 20 * HOUR_MS, "?", history=["b", "a"]), 2) == ["p", "r"]


def test_cooccurrence_counts_each_real_pair_of_watches_once():
    # one user's watches v1..v4, one example per target: histories overlap
    train = [
        ex("u", 2 * HOUR_MS, "v2", history=["v1"]),
        ex("u", 3 * HOUR_MS, "v3", history=["v1", "v2"]),
        ex("u", 4 * HOUR_MS, "v4", history=["v1", "v2", "v3"]),
    ]
    co = CooccurrenceBaseline.fit(train, window=1, candidates={"v1", "v2", "v3", "v4"})
    assert [co.co_count("v1", "v2"), co.co_count("v2", "v3"), co.co_count("v3", "v4")] == [1] * 3
    assert co.co_count("v2", "v1") == 1  # symmetric
    assert co.co_count("v1", "v3") == 0  # two apart: outside window=1
    assert CooccurrenceBaseline.fit(train, window=2).co_count("v1", "v3") == 1


# ---------------------------------------------------------------------------- splits


def _stream():
    rng = np.random.default_rng(0)
    out = []
    for u in range(6):
        for j in range(u):  # user u has u examples (0..5)
            out.append(ex(f"u{u}", int(rng.integers(0, 50)), f"v{j}", eid=f"u{u}-{j}"))
    return out


def test_fresh_split_holds_out_the_newest_examples_without_leakage():
    examples = _stream()
    train, fresh = fresh_split(examples, 0.2)
    assert len(train) + len(fresh) == len(examples)
    assert {e.event_id for e in train} | {e.event_id for e in fresh} == {
        e.event_id for e in examples
    }
    assert max(e.ts for e in train) < min(e.ts for e in fresh)
    assert len(fresh) >= round(0.2 * len(examples))
    assert fresh_split(list(reversed(examples)), 0.2)[1] == fresh  # deterministic
    with pytest.raises(ValueError, match="holdout_fraction"):
        fresh_split(examples, 1.0)


def test_fresh_split_sends_every_tie_at_the_cut_to_fresh():
    examples = [ex("u", ts, "v", eid=str(i)) for i, ts in enumerate([1, 2, 3, 3, 3])]
    train, fresh = fresh_split(examples, 0.2)  # asks for 1, the cut ts 3 has 3 examples
    assert [e.ts for e in train] == [1, 2] and [e.ts for e in fresh] == [3, 3, 3]


def test_leave_last_out_is_recbole_leave_one_out_per_user():
    examples = _stream()
    train, valid, test = leave_last_out(examples)
    assert len(train) + len(valid) + len(test) == len(examples)
    by_user = {}
    for e in examples:
        by_user.setdefault(e.user_id, []).append(e)
    test_users = [e.user_id for e in test]
    assert sorted(test_users) == sorted(u for u, es in by_user.items() if len(es) >= 2)
    assert len(set(test_users)) == len(test_users)  # one test example per user
    assert sorted(e.user_id for e in valid) == sorted(
        u for u, es in by_user.items() if len(es) >= 3
    )
    for t in test:  # the test example is the user's latest, validation the second latest
        mine = [e for e in train + valid if e.user_id == t.user_id]
        assert all(e.ts <= t.ts for e in mine)
    for v in valid:
        assert all(e.ts <= v.ts for e in train if e.user_id == v.user_id)
    assert {e.user_id for e in train} == set(by_user)  # everyone keeps training data
    assert leave_last_out(list(reversed(examples)))[2] == test


def test_model_trains_only_on_examples_older_than_the_scored_ones():
    examples = _stream()
    for on in ("fresh", "validation"):
        train, scored = scoring_split(examples, "fresh_split", on, 0.2)
        assert train and scored
        assert max(e.ts for e in train) < min(e.ts for e in scored)
    train, fresh = scoring_split(examples, "fresh_split", "fresh", 0.2)
    assert len(train) + len(fresh) == len(examples)
    # validation: carved from the training part, never touching the fresh slice
    v_train, valid = scoring_split(examples, "fresh_split", "validation", 0.2)
    assert {e.event_id for e in v_train + valid} == {e.event_id for e in train}


def test_leave_last_out_scores_on_test_or_validation_and_never_trains_on_either():
    examples = _stream()
    train, valid, test = leave_last_out(examples)
    assert scoring_split(examples, "leave_last_out", "fresh") == (train, test)
    assert scoring_split(examples, "leave_last_out", "validation") == (train, valid)


def test_bad_eval_target_is_rejected():
    with pytest.raises(ValueError, match="score on 'test'"):
        scoring_split(_stream(), "fresh_split", "test")
    with pytest.raises(ValueError, match="protocol"):
        scoring_split(_stream(), "random", "fresh")


def test_evenly_spaced_keeps_both_ends_and_the_order():
    examples = [ex("u", ts, "v", eid=str(ts)) for ts in range(10)]
    assert [e.ts for e in evenly_spaced(examples, 4)] == [0, 3, 6, 9]
    assert evenly_spaced(examples, 20) == examples
    with pytest.raises(ValueError):
        evenly_spaced(examples, 0)


# ---------------------------------------------------------------------------- model ranker

LEVELS = (4, 3, 2)  # + a disambiguation slot (1 code + "none") -> slot sizes (4, 3, 2, 2)
N_VIDEOS = 6
MAX_PROMPT = 24


@pytest.fixture(scope="module")
def model():
    text = train_text_tokenizer(["a user watched some videos today"] * 10, 300)
    vocab = Vocab(text, LEVELS, disambiguation_size=1)
    cfg = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=32).with_vocab(vocab.size)
    params = init_params(cfg, jax.random.PRNGKey(0))
    # scaled tied embeddings make a confident model, so exact score ties are unlikely
    params = {**params, "embed_tokens": {"embedding": params["embed_tokens"]["embedding"] * 20}}
    all_sids = list(itertools.product(*map(range, LEVELS)))
    picks = np.random.default_rng(1).choice(len(all_sids), N_VIDEOS, replace=False)
    sids = {f"v{i}": all_sids[p] for i, p in enumerate(picks)}
    lookup = SidLookup("test-v1", sids)
    rng = np.random.default_rng(2)
    videos = sorted(sids)
    examples = [
        ex(
            f"u{i}",
            100 * HOUR_MS,
            videos[i % N_VIDEOS],
            history=[str(v) for v in rng.choice(videos + ["gone"], size=i % 4)],
            ctx=videos[(i + 1) % N_VIDEOS] if i % 2 else None,
        )
        for i in range(7)
    ]
    return cfg, params, vocab, lookup, examples


def test_model_ranker_returns_only_indexed_videos_as_an_exhaustive_ranking_would(model):
    cfg, params, vocab, lookup, examples = model
    ranker = ModelRanker(
        cfg, params, vocab, lookup, beams=8, max_prompt_len=MAX_PROMPT, batch_size=4
    )
    ranked = ranker.rank_many(examples, 8)  # 7 examples: 2 batches, the second padded
    assert len(ranked) == len(examples)
    for r in ranked:
        assert len(r) == min(8, N_VIDEOS) and len(set(r)) == len(r)
        assert set(r) <= set(lookup.sids)
    # beams >= items: the constrained search is exact, i.e. the teacher-forced ranking
    tokens, mask = ranker.prompts(examples)
    assert tokens.shape == (len(examples), MAX_PROMPT)
    videos = ranker.video_ids
    scores = np.asarray(
        score_sids(cfg, params, tokens, mask, [vocab.encode_sid(lookup.sids[v]) for v in videos])
    )  # [examples, videos]
    brute = [[videos[i] for i in np.argsort(-row, kind="stable")] for row in scores]
    assert ranked == brute
    targets = [e.target_video_id for e in examples]
    for k in (1, 3):
        assert recall_at_k(ranked, targets, k) == recall_at_k(brute, targets, k)
    assert ranker.search._fn._cache_size() == 1  # fixed shapes: one compile for all batches
    assert ranker.rank(examples[0], 2) == ranked[0][:2]


def test_evaluate_reports_every_ranker_on_the_same_examples(model):
    cfg, params, vocab, lookup, examples = model
    cands = candidate_ids(lookup, vocab)
    assert cands == set(lookup.sids)
    train, held = examples[:4], examples[4:] + [ex("late", 1, "no-sid-yet")]
    rankers = {
        **fit_baselines(train, cands, window=2),
        "model": ModelRanker(cfg, params, vocab, lookup, beams=4, max_prompt_len=MAX_PROMPT),
        "model_free": ModelRanker(
            cfg, params, vocab, lookup, 4, MAX_PROMPT, batch_size=4, constrained=False
        ),
    }
    report = evaluate(rankers, held, ks=(1, 5), candidates=cands, ndcg_ks=(3,))
    assert report["num_examples"] == 3 and report["num_skipped_no_sid"] == 1
    assert set(report["rankers"]) == {"popularity", "cooccurrence", "model", "model_free"}
    # popularity by hand: training targets v0..v3 once each, so every list is v0 v1 v2 v3 v4
    # v5; the scored targets v4, v5, v0 sit at ranks 5, 6 and 1
    pop = report["rankers"]["popularity"]
    assert (pop["recall@1"], pop["recall@5"], pop["ndcg@3"]) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
    scored = held[:3]
    for name in ("cooccurrence", "model"):  # the report vs one ranking at a time
        hits = [
            ranking.index(e.target_video_id) if e.target_video_id in ranking else None
            for e in scored
            for ranking in [rankers[name].rank(e, 5)]
        ]
        entry = report["rankers"][name]
        assert entry["recall@1"] == pytest.approx(sum(h == 0 for h in hits) / 3)
        assert entry["recall@5"] == pytest.approx(sum(h is not None for h in hits) / 3)
        gains = [1 / math.log2(h + 2) for h in hits if h is not None and h < 3]
        assert entry["ndcg@3"] == pytest.approx(sum(gains) / 3)
    assert report["rankers"]["model"]["hallucination_rate"] == 0.0
    assert "hallucination_rate" not in report["rankers"]["popularity"]
    # 6 of 24 SIDs in the index and 4 free beams: the unconstrained search mostly misses
    free = rankers["model_free"].generate(held[:3])
    assert free.generated == 3 * 4 and free.invalid > 0
    assert report["rankers"]["model_free"]["hallucination_rate"] == pytest.approx(
        free.hallucination_rate
    )
    assert all(set(r) <= cands for r in free.ranked)


def test_model_ranker_rejects_a_prompt_longer_than_the_model(model):
    cfg, params, vocab, lookup, _ = model
    with pytest.raises(ValueError, match="max_len"):
        ModelRanker(cfg, params, vocab, lookup, max_prompt_len=cfg.max_len)


# ---------------------------------------------------------------------------- MovieLens


def test_movielens_ratings_become_time_ordered_examples_per_user():
    cfg = MovieLensConfig(duration_s=1000.0)
    ratings = [  # any order in, timeline order out
        Rating("1", "30", 4.0, 7200),
        Rating("2", "10", 1.0, 100),
        Rating("1", "10", 5.0, 0),
        Rating("1", "20", 3.0, 3600),
        Rating("1", "40", 2.0, 9000),
    ]
    out = movielens_examples(ratings, cfg, history_len=2)
    assert [(e.user_id, e.target_video_id) for e in out] == [
        ("ml100k-u1", "ml100k-m20"),
        ("ml100k-u1", "ml100k-m30"),
        ("ml100k-u1", "ml100k-m40"),
    ]  # user 2 has one rating: no history, no example
    second = out[1]
    assert second.ts == 7_200_000 and second.event_id == "ml100k-1-7200-0000-30"
    assert second.reward == pytest.approx(0.8)
    assert second.context_video_id == "ml100k-m20"
    assert second.history == (
        HistoryItem("ml100k-m10", 1.0, 1000.0, 2.0),
        HistoryItem("ml100k-m20", 0.6, 600.0, 1.0),
    )
    assert [h.video_id for h in out[2].history] == ["ml100k-m20", "ml100k-m30"]  # last 2
    assert out[2].history[-1].hours_since == pytest.approx(1800 / 3600)
    assert len(movielens_examples(ratings, cfg, history_len=2, min_history=0)) == 5


class _Spy:
    """Records the example ids a ranker is asked about, then delegates."""

    def __init__(self, name, inner, seen):
        self.name, self.inner, self.seen = name, inner, seen

    def rank_many(self, examples, k):
        self.seen[self.name] = [e.event_id for e in examples]
        return self.inner.rank_many(examples, k)


class _GeneratorSpy(_Spy):
    def generate(self, examples):
        self.seen[self.name] = [e.event_id for e in examples]
        return self.inner.generate(examples)


def test_every_ranker_is_scored_on_the_same_examples(model):
    cfg, params, vocab, lookup, examples = model
    cands = candidate_ids(lookup, vocab)
    train, held = examples[:4], examples[4:] + [ex("late", 1, "no-sid-yet")]
    rankers = {
        **fit_baselines(train, cands, window=2),
        "model": ModelRanker(cfg, params, vocab, lookup, beams=4, max_prompt_len=MAX_PROMPT),
    }
    seen: dict[str, list[str]] = {}
    wrapped = {
        name: (_GeneratorSpy if isinstance(r, SidGenerator) else _Spy)(name, r, seen)
        for name, r in rankers.items()
    }
    report = evaluate(wrapped, held, candidates=cands)
    assert set(seen) == {"popularity", "cooccurrence", "model"}
    first = seen["popularity"]
    assert first, "no example was scored"
    assert all(ids == first for ids in seen.values())
    assert report["num_examples"] == len(first)
    assert "hallucination_rate" in report["rankers"]["model"]  # scored through generate()
