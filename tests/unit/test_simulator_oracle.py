"""The simulator's oracle ranker: it follows the hidden session and click model."""

from __future__ import annotations

from streams.contracts.schema import SftExample
from streams.simulator.oracle import OracleRanker


def _truth(stickiness: float) -> dict:
    # two topics; topic 0 holds a0, a1, topic 1 holds b0, b1; latent = topic centroid
    centroids = [[1.0, 0.0], [0.0, 1.0]]
    videos = [
        {"video_id": v, "topic": t, "popularity": pop, "latent": centroids[t]}
        for v, t, pop in (("a0", 0, 3.0), ("a1", 0, 1.0), ("b0", 1, 2.0), ("b1", 1, 1.0))
    ]
    return {
        "config": {
            "session_topic_stickiness": stickiness,
            "explore_fraction": 0.0,
            "match_scale": 8.0,
            "match_center": 0.25,
        },
        "topics": [{"centroid": c} for c in centroids],
        "videos": videos,
        "users": [{"user_id": "u", "interests": [0.0, 1.0]}],  # only topic 1
    }


def _example(context: str | None) -> SftExample:
    return SftExample("e", "u", (), context, "a0", 1.0, 0)


def test_without_a_context_the_users_interest_and_popularity_decide():
    oracle = OracleRanker(_truth(0.8), ["a0", "a1", "b0", "b1"])
    assert oracle.rank_many([_example(None)], 2) == [["b0", "b1"]]


def test_a_sticky_session_ranks_the_context_topic_first():
    oracle = OracleRanker(_truth(1.0), ["a0", "a1", "b0", "b1"])
    assert oracle.rank_many([_example("a1")], 2) == [["a0", "a1"]]


def test_only_candidates_the_truth_knows_are_ranked():
    oracle = OracleRanker(_truth(0.8), ["b1", "zz"])
    assert oracle.rank_many([_example(None)], 5) == [["b1"]]
