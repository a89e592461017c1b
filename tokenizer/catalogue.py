"""Name a fixed catalogue offline: train SID-v2 on part of it, encode every item with the
frozen model, and give each item its Semantic ID by the SID index's own rule.

The SID service names uploads as they stream in (tokenizer/service.py); an offline
evaluation wants the same SIDs for a catalogue it already holds, without Kafka. The
disambiguation code comes from `SidIndex.assign_many` on an in-memory index, so the rule
(the L codes, then the order of arrival within that L-code prefix, at most
`disambiguation_size` videos per prefix) is written once, in tokenizer/index.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenizer.config import TokenizerConfig
from tokenizer.frozen import TrainedTokenizer
from tokenizer.index import Assignment, SidIndex, SidSpaceExhausted
from tokenizer.report import first_code_alignment, sid_uniqueness
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)

IN_MEMORY = ":memory:"


def assign_sids(
    version: str,
    video_ids: Sequence[str],
    codes: np.ndarray,
    disambiguation_size: int,
) -> tuple[dict[str, tuple[int, ...]], int]:
    """Videos in arrival order with their L codes ([N, L]) -> (video -> SID, videos left
    without a SID because their prefix was full), as the SID service would assign them."""
    index = SidIndex(IN_MEMORY, disambiguation_size)
    try:
        results = index.assign_many(
            version, zip(video_ids, np.asarray(codes).tolist(), strict=True), ts=0
        )
    finally:
        index.close()
    sids = {a.video_id: a.sid for a in results if isinstance(a, Assignment)}
    return sids, sum(isinstance(a, SidSpaceExhausted) for a in results)


@dataclass(frozen=True)
class NamedCatalogue:
    tokenizer: TrainedTokenizer
    ids: tuple[str, ...]  # arrival order
    codes: np.ndarray  # [items, L] the frozen tokenizer's codes, rows in `ids` order
    sids: dict[str, tuple[int, ...]]  # L codes + disambiguation code
    overflow: int  # videos without a SID (prefix full)

    @property
    def version(self) -> str:
        return self.tokenizer.sid_version

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return self.tokenizer.level_sizes

    def report(self, fit_rows: np.ndarray, pairs: np.ndarray, seed: int = 0) -> dict[str, Any]:
        """Uniqueness before disambiguation, overflow, and how often the co-occurring
        `pairs` (rows of `fit_rows`) share their first one and two codes vs random pairs."""
        fit_codes = self.codes[fit_rows]
        rng = np.random.default_rng(seed)
        return {
            "items": len(self.ids),
            "fit_items": int(len(fit_rows)),
            "level_sizes": list(self.level_sizes),
            "uniqueness_before_disambiguation": sid_uniqueness(self.codes),
            "max_disambiguation_code": max((s[-1] for s in self.sids.values()), default=0),
            "no_sid_overflow": self.overflow,
            "first_code_alignment": first_code_alignment(fit_codes, pairs, rng, levels=1),
            "first_two_codes_alignment": first_code_alignment(fit_codes, pairs, rng, levels=2),
        }


def name_catalogue(
    ids: Sequence[str],
    embeddings: Mapping[str, np.ndarray],
    fit_rows: np.ndarray,
    pairs: np.ndarray,
    config: TokenizerConfig,
    disambiguation_size: int,
) -> NamedCatalogue:
    """Train on the rows `fit_rows` of `embeddings` (`pairs` index into those rows), then
    encode and assign every item (`ids` in arrival order, rows of `embeddings`)."""
    fit = {k: v[fit_rows] for k, v in embeddings.items()}
    tok = train_tokenizer(fit, pairs, config)
    codes = np.asarray(tok.encode(dict(embeddings)))  # [items, L]
    sids, overflow = assign_sids(tok.sid_version, ids, codes, disambiguation_size)
    if overflow:
        log.warning(
            "%d of %d items got no SID: their L-code prefix already had %d videos",
            overflow,
            len(ids),
            disambiguation_size,
        )
    return NamedCatalogue(tok, tuple(ids), codes, sids, overflow)
