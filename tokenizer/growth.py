"""SID collisions as the catalogue grows: the tokenizer is trained once, new uploads keep
coming, and the frozen encoder names them (what the SID service does between retrains).

The simulator's world (streams.simulator.world) draws a catalogue; the tokenizer trains
on the first `fit_items` videos with co-occurring pairs from the simulator's own watching
(a user, one of their interest topics, consecutive videos of that topic by popularity,
among the fitted videos only); then every video, the fitted ones and a held-out set
`growth` times larger, is encoded by the frozen tokenizer and assigned a SID in upload
order exactly as the SID service does (tokenizer.catalogue.name_catalogue).

Reported: uniqueness before disambiguation of the fitted videos, of the held-out ones
and of the grown catalogue; the collision-size distribution (how many videos sit in SID
groups of 1, 2, 3, ... videos: the disambiguation code they need); the largest group and
the videos left without a SID. When the grown catalogue is below `target` unique, each
`REMEDIES` codebook change is trained and measured the same way, and the first one that
restores `target` is named.

    audit = catalogue_growth(tokenizer_cfg, simulator_cfg, fit_items=1000, growth=2.5)
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np

from streams.simulator.config import SimulatorConfig
from streams.simulator.world import World
from tokenizer.catalogue import name_catalogue
from tokenizer.config import TokenizerConfig
from tokenizer.report import sid_uniqueness

log = logging.getLogger(__name__)

TARGET_UNIQUENESS = 0.95
# Codebook changes tried, in order, when the grown catalogue collides too often.
REMEDIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("double every codebook (codebook_base x2)", {"codebook_base_factor": 2}),
    ("one more level (num_levels + 1)", {"extra_levels": 1}),
    ("both", {"codebook_base_factor": 2, "extra_levels": 1}),
)


@dataclasses.dataclass(frozen=True)
class GrownCatalogue:
    """A simulated catalogue: video ids in upload order, their embeddings, and the
    co-occurring pairs (row indices) among the first `fit_items` videos."""

    ids: tuple[str, ...]
    embeddings: dict[str, np.ndarray]
    fit_items: int
    pairs: np.ndarray


def simulated_catalogue(
    sim: SimulatorConfig, fit_items: int, growth: float, pairs_per_item: int = 5, seed: int = 0
) -> GrownCatalogue:
    """`fit_items` + round(growth * fit_items) videos from the simulator's world, and
    `pairs_per_item * fit_items` co-occurring pairs among the first `fit_items`."""
    if fit_items < 2 or growth <= 0:
        raise ValueError(f"fit_items={fit_items} must be >= 2 and growth={growth} > 0")
    rng = np.random.default_rng(seed)
    world = World(sim, rng)
    total = fit_items + int(round(growth * fit_items))
    videos = [world.new_video(ts=i) for i in range(total)]
    for v in videos[:fit_items]:
        world.publish(v)  # only the fitted videos are watched before training
    pairs: list[tuple[int, int]] = []
    while len(pairs) < pairs_per_item * fit_items:
        topic = world.sample_interest_topic(world.sample_user(rng), rng)
        a, b = world.sample_video(topic, rng), world.sample_video(topic, rng)
        if a != b:
            pairs.append((a, b))
    names = sorted(videos[0].embeddings)
    embeddings = {n: np.asarray([v.embeddings[n] for v in videos], np.float32) for n in names}
    return GrownCatalogue(
        tuple(v.video_id for v in videos), embeddings, fit_items, np.asarray(pairs, np.int32)
    )


def collision_sizes(codes: np.ndarray) -> dict[str, int]:
    """Group size -> videos in groups of that size (1 = unique SID before disambiguation)."""
    groups = Counter(map(tuple, np.asarray(codes).tolist()))
    sizes: Counter[int] = Counter()
    for n in groups.values():
        sizes[n] += n
    return {str(k): sizes[k] for k in sorted(sizes)}


def _remedy_config(config: TokenizerConfig, change: dict[str, Any]) -> TokenizerConfig:
    return dataclasses.replace(
        config,
        codebook_base=config.codebook_base * change.get("codebook_base_factor", 1),
        num_levels=config.num_levels + change.get("extra_levels", 0),
    )


def audit(
    catalogue: GrownCatalogue, config: TokenizerConfig, disambiguation_size: int
) -> dict[str, Any]:
    """Train on the fitted videos, name every video, report the collisions."""
    fit_rows = np.arange(catalogue.fit_items)
    named = name_catalogue(
        catalogue.ids,
        catalogue.embeddings,
        fit_rows,
        catalogue.pairs,
        config,
        disambiguation_size,
    )
    codes = named.codes
    sizes = collision_sizes(codes)
    return {
        "level_sizes": list(named.level_sizes),
        "uniqueness_fitted": sid_uniqueness(codes[: catalogue.fit_items]),
        "uniqueness_held_out": sid_uniqueness(codes[catalogue.fit_items :]),
        "uniqueness_grown": sid_uniqueness(codes),
        "collision_sizes": sizes,
        "largest_group": max(int(k) for k in sizes),
        "no_sid_overflow": named.overflow,
    }


def catalogue_growth(
    config: TokenizerConfig,
    sim: SimulatorConfig,
    fit_items: int = 1000,
    growth: float = 2.5,
    disambiguation_size: int = 32,
    target: float = TARGET_UNIQUENESS,
) -> dict[str, Any]:
    """The audit at `config`, and, below `target`, each remedy until one restores it."""
    catalogue = simulated_catalogue(sim, fit_items, growth, seed=config.seed)
    out: dict[str, Any] = {
        "fit_items": fit_items,
        "held_out_items": len(catalogue.ids) - fit_items,
        "pairs": int(len(catalogue.pairs)),
        "target_uniqueness": target,
        "as_configured": audit(catalogue, config, disambiguation_size),
        "remedies": {},
        "restored_by": None,
    }
    log.info("catalogue growth, as configured: %s", out["as_configured"])
    if out["as_configured"]["uniqueness_grown"] >= target:
        return out
    for name, change in REMEDIES:
        result = audit(catalogue, _remedy_config(config, change), disambiguation_size)
        out["remedies"][name] = result
        log.info("catalogue growth, %s: %s", name, result)
        if result["uniqueness_grown"] >= target:
            out["restored_by"] = name
            break
    return out
