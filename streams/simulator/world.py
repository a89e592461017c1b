"""The simulator's latent world: topics, users, videos and how well they match.

- K topics, each a centroid in R^D (orthonormal when D >= K, so topics do not overlap).
- A user is a Dirichlet mixture of interests over topics; her latent vector is the
  mixture of the centroids.
- A video has a primary topic, a Dirichlet topic mixture focused on it, a latent vector
  (mixture of centroids + noise), a Zipf popularity weight, and one content embedding
  per modality that is a fixed random linear view of the latent vector plus noise —
  so a tokenizer can recover topic structure from the embeddings alone.
- Match(user, video) = dot product of their latent vectors, ~ the share of the user's
  interest in the video's topics; clicks and watch ratio are driven by it.

Only videos whose upload has been produced are in the sampling tables, so a watch never
names a video that was not uploaded before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.contracts.schema import UploadEvent
from streams.simulator.config import SimulatorConfig

TOPIC_NAMES = (
    "music",
    "gaming",
    "cooking",
    "travel",
    "science",
    "sports",
    "comedy",
    "news",
    "fitness",
    "diy",
    "pets",
    "tech",
    "fashion",
    "finance",
    "history",
    "art",
    "cars",
    "movies",
    "education",
    "nature",
    "dance",
    "kids",
    "health",
    "beauty",
)
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ra",
    "ne",
    "tu",
    "so",
    "vi",
    "da",
    "po",
    "le",
    "zu",
    "fi",
    "ga",
    "mo",
    "ri",
)
WORDS_PER_TOPIC = 12


@dataclass(frozen=True)
class Video:
    index: int
    video_id: str
    topic: int  # primary topic
    mixture: np.ndarray  # [topics]
    latent: np.ndarray  # [latent_dim]
    popularity: float
    duration_s: float
    channel: str
    title: str
    description: str
    embeddings: dict[str, tuple[float, ...]]
    upload_ts: int


class World:
    """The latent model. Built deterministically from `rng`; new videos draw from it too."""

    def __init__(self, cfg: SimulatorConfig, rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        k, d = cfg.num_topics, cfg.latent_dim
        # [topics, latent_dim]; rows orthonormal when d >= k (QR of a Gaussian).
        gauss = rng.standard_normal((d, k))
        if d >= k:
            q, _ = np.linalg.qr(gauss)
            self.centroids = q.T.copy()
        else:
            self.centroids = (gauss / np.linalg.norm(gauss, axis=0, keepdims=True)).T.copy()
        self.topic_names = tuple(
            TOPIC_NAMES[i] if i < len(TOPIC_NAMES) else f"topic{i}" for i in range(k)
        )
        self.topic_words = tuple(
            tuple(_word(rng) for _ in range(WORDS_PER_TOPIC)) for _ in range(k)
        )
        # Topics are not equally big: a video's primary topic is drawn from this prior.
        self.topic_prior = rng.dirichlet(np.full(k, 2.0))
        self.topic_prior_cum = np.cumsum(self.topic_prior)
        # One fixed random linear view per modality: [dim, latent_dim].
        self.projections = {
            name: rng.standard_normal((dim, d))
            for name, dim in zip(cfg.modalities, cfg.embedding_dims, strict=True)
        }
        # Users: [users, topics] interest mixtures, [users, latent_dim] latent vectors.
        self.user_ids = tuple(f"u{i:06d}" for i in range(cfg.num_users))
        self.user_interests = rng.dirichlet(np.full(k, cfg.user_interest_alpha), size=cfg.num_users)
        self.user_interest_cum = np.cumsum(self.user_interests, axis=1)
        self.user_latent = self.user_interests @ self.centroids
        # Heavy and light users: activity weights with a power law like popularity.
        ranks = rng.permutation(cfg.num_users) + 1
        self.user_activity_cum = np.cumsum(ranks.astype(float) ** -0.8)

        self.videos: list[Video] = []
        self._topic_members: list[list[int]] = [[] for _ in range(k)]
        self._topic_weights: list[list[float]] = [[] for _ in range(k)]
        self._topic_cum: list[np.ndarray | None] = [None] * k

    # ------------------------------------------------------------------ videos

    def new_video(self, ts: int) -> Video:
        """Draw the next video (not yet watchable: call `publish` once its upload is out)."""
        cfg, rng = self.cfg, self.rng
        index = len(self.videos)
        topic = int(
            min(
                np.searchsorted(self.topic_prior_cum, rng.random(), side="right"),
                cfg.num_topics - 1,
            )
        )
        alpha = np.full(cfg.num_topics, cfg.video_topic_alpha)
        alpha[topic] += cfg.video_topic_focus
        mixture = rng.dirichlet(alpha)
        latent = mixture @ self.centroids + rng.standard_normal(cfg.latent_dim) * (
            cfg.video_latent_noise / np.sqrt(cfg.latent_dim)
        )
        # A random Zipf rank among the initial catalogue's size: new uploads can be hits too.
        rank = 1 + int(rng.integers(cfg.initial_videos))
        popularity = float(rank**-cfg.zipf_exponent)
        duration = float(np.clip(round(rng.lognormal(np.log(240.0), 0.9), 1), 5.0, 7200.0))
        channel = f"{self.topic_names[topic]}-channel-{int(rng.integers(cfg.channels_per_topic))}"
        words = self.topic_words[topic]
        picks = [words[int(i)] for i in rng.integers(len(words), size=4)]
        title = f"{self.topic_names[topic]} {picks[0]} {picks[1]} #{index}"
        description = (
            f"A {self.topic_names[topic]} video about {picks[1]}, {picks[2]} and {picks[3]}."
        )
        embeddings = {}
        for name, noise in zip(cfg.modalities, cfg.embedding_noise, strict=True):
            proj = self.projections[name]
            view = proj @ latent + rng.standard_normal(proj.shape[0]) * noise
            embeddings[name] = tuple(round(float(x), 4) for x in view)
        video = Video(
            index=index,
            video_id=f"v{index:07d}",
            topic=topic,
            mixture=mixture,
            latent=latent,
            popularity=popularity,
            duration_s=duration,
            channel=channel,
            title=title,
            description=description,
            embeddings=embeddings,
            upload_ts=ts,
        )
        self.videos.append(video)
        return video

    def publish(self, video: Video) -> None:
        """Make `video` watchable (its upload has been produced)."""
        self._topic_members[video.topic].append(video.index)
        self._topic_weights[video.topic].append(video.popularity)
        self._topic_cum[video.topic] = None

    def upload_event(self, video: Video) -> UploadEvent:
        topics = [self.topic_names[video.topic]]
        for t in np.argsort(-video.mixture)[:2]:
            if int(t) != video.topic and video.mixture[t] >= 0.25:
                topics.append(self.topic_names[int(t)])
        return UploadEvent(
            video_id=video.video_id,
            ts=video.upload_ts,
            title=video.title,
            description=video.description,
            channel=video.channel,
            topics=tuple(topics),
            duration_s=video.duration_s,
            embeddings=video.embeddings,
        )

    # ------------------------------------------------------------------ sampling

    def sample_user(self, rng: np.random.Generator) -> int:
        u = rng.random() * self.user_activity_cum[-1]
        return int(
            min(np.searchsorted(self.user_activity_cum, u, side="right"), self.cfg.num_users - 1)
        )

    def sample_interest_topic(self, user: int, rng: np.random.Generator) -> int:
        if rng.random() < self.cfg.explore_fraction:
            return int(rng.integers(self.cfg.num_topics))
        cum = self.user_interest_cum[user]
        return int(
            min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), self.cfg.num_topics - 1)
        )

    def sample_video(self, topic: int, rng: np.random.Generator) -> int:
        """A published video of `topic` by popularity; another topic's if it has none yet."""
        if not self._topic_members[topic]:
            nonempty = [t for t in range(self.cfg.num_topics) if self._topic_members[t]]
            topic = nonempty[int(rng.integers(len(nonempty)))]
        cum = self._topic_cum[topic]
        if cum is None:
            cum = self._topic_cum[topic] = np.cumsum(self._topic_weights[topic])
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        members = self._topic_members[topic]
        return members[min(i, len(members) - 1)]

    def match(self, user: int, video: int) -> float:
        """Dot product of the user's and the video's latent vectors (~ interest share)."""
        return float(self.user_latent[user] @ self.videos[video].latent)

    @property
    def published(self) -> int:
        return sum(len(m) for m in self._topic_members)

    # ------------------------------------------------------------------ ground truth

    def ground_truth(self) -> dict[str, Any]:
        """Everything the simulator drew, in plain JSON, for offline evaluation."""

        def vec(a: np.ndarray) -> list[float]:
            return [round(float(x), 6) for x in a]

        published = {i for members in self._topic_members for i in members}
        return {
            "topics": [
                {
                    "index": k,
                    "name": self.topic_names[k],
                    "prior": round(float(self.topic_prior[k]), 6),
                    "centroid": vec(self.centroids[k]),
                    "words": list(self.topic_words[k]),
                }
                for k in range(self.cfg.num_topics)
            ],
            "projections": {name: [vec(row) for row in p] for name, p in self.projections.items()},
            "users": [
                {"user_id": uid, "interests": vec(self.user_interests[i])}
                for i, uid in enumerate(self.user_ids)
            ],
            "videos": [
                {
                    "video_id": v.video_id,
                    "topic": v.topic,
                    "topic_name": self.topic_names[v.topic],
                    "topic_mixture": vec(v.mixture),
                    "latent": vec(v.latent),
                    "popularity": v.popularity,
                    "duration_s": v.duration_s,
                    "channel": v.channel,
                    "upload_ts": v.upload_ts,
                }
                for v in self.videos
                if v.index in published
            ],
        }


def _word(rng: np.random.Generator) -> str:
    n = 2 + int(rng.integers(2))
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=n))
