"""A ranker that knows the simulator's hidden generative model: a reference ceiling.

Not a baseline (it sees what no recommender can: each user's interests and each video's
latent vector and popularity), so offline evaluations report it beside the model and the
baselines and never count it in a ratio. It ranks by the simulator's own probabilities
(streams/simulator/stream.py, world.py) without the noise:

    score(v) = P(topic(v) | context, user) * popularity(v) / popularity of topic(v)
               * sigmoid(match_scale * (user_latent . latent(v) - match_center))

with P(topic) = stickiness on the context video's topic + (1 - stickiness) * the user's
interest mixture (explore_fraction of it uniform): the session model times the click
model. Input: the ground truth `Simulator.ground_truth()` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streams.contracts.schema import SftExample


class OracleRanker:
    """Ranks `candidates` (those the ground truth knows) for SFT examples, best first."""

    def __init__(self, truth: dict[str, Any], candidates: Sequence[str]) -> None:
        c = truth["config"]
        self.stick = float(c["session_topic_stickiness"])
        self.explore = float(c["explore_fraction"])
        self.scale, self.center = float(c["match_scale"]), float(c["match_center"])
        videos = {v["video_id"]: v for v in truth["videos"]}
        self.ids = [v for v in sorted(candidates) if v in videos]
        self.topic_of = {v: int(videos[v]["topic"]) for v in videos}
        topics = np.asarray([self.topic_of[v] for v in self.ids])
        pop = np.asarray([videos[v]["popularity"] for v in self.ids], np.float64)
        self.n_topics = len(truth["topics"])
        per_topic = np.bincount(topics, weights=pop, minlength=self.n_topics)
        self.topics = topics
        self.norm_pop = pop / np.maximum(per_topic[topics], 1e-12)
        self.latent = np.asarray([videos[v]["latent"] for v in self.ids])  # [items, d]
        centroids = np.asarray([t["centroid"] for t in truth["topics"]])
        self.interests = {u["user_id"]: np.asarray(u["interests"]) for u in truth["users"]}
        self.user_latent = {u: i @ centroids for u, i in self.interests.items()}

    def rank_many(self, examples: Sequence[SftExample], k: int) -> list[list[str]]:
        out = []
        uniform = np.full(self.n_topics, 1.0 / self.n_topics)
        for e in examples:
            interests = self.interests[e.user_id]
            p = (1 - self.explore) * interests / interests.sum() + self.explore * uniform
            ctx = self.topic_of.get(e.context_video_id) if e.context_video_id else None
            if ctx is not None:
                p = (1 - self.stick) * p
                p[ctx] += self.stick
            logit = self.scale * (self.latent @ self.user_latent[e.user_id] - self.center)
            score = p[self.topics] * self.norm_pop / (1 + np.exp(-logit))
            top = np.argsort(-score, kind="stable")[:k]
            out.append([self.ids[i] for i in top])
        return out
