"""Synthetic multi-modal items with known structure, for tests and the ablation bench.

Like the platform simulator: each item has a latent topic; its item vector is the topic
vector plus item-specific variation; each modality is a noisy random linear view of the
item vector. Co-occurring pairs are drawn mostly within a topic.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def clustered_items(
    num_items: int,
    modality_dims: Mapping[str, int],
    num_topics: int = 16,
    latent_dim: int = 16,
    item_spread: float = 0.5,
    view_noise: float = 0.05,
    num_pairs: int = 2000,
    cross_topic_pairs: float = 0.1,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Returns (embeddings {name: [N, d]}, pairs [P, 2], topic of each item [N])."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_topics, latent_dim)) * 2.0
    topic = rng.integers(num_topics, size=num_items)
    item = centers[topic] + item_spread * rng.standard_normal((num_items, latent_dim))
    embeddings = {}
    for name, dim in modality_dims.items():
        view = rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)
        x = item @ view + view_noise * rng.standard_normal((num_items, dim))
        embeddings[name] = x.astype(np.float32)
    members = [np.flatnonzero(topic == t) for t in range(num_topics)]
    pairs = []
    while len(pairs) < num_pairs:
        a = int(rng.integers(num_items))
        if rng.random() < cross_topic_pairs:
            b = int(rng.integers(num_items))
        else:
            b = int(rng.choice(members[topic[a]]))
        if a != b:
            pairs.append((a, b))
    return embeddings, np.array(pairs, np.int32), topic
