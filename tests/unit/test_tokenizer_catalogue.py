"""Naming a catalogue offline: the SID index's assignment rule, a tiny trained catalogue."""

from __future__ import annotations

import numpy as np

from plum.config import REPO_ROOT
from tokenizer.catalogue import assign_sids, name_catalogue
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex, SidSpaceExhausted
from tokenizer.synthetic import clustered_items


def test_disambiguation_code_is_order_of_arrival_within_the_prefix():
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [1, 2]])
    sids, overflow = assign_sids("v1", ["a", "b", "c", "d", "e"], codes, disambiguation_size=3)
    assert sids == {"a": (1, 2, 0), "b": (1, 2, 1), "c": (3, 4, 0), "d": (1, 2, 2)}
    assert overflow == 1  # "e" would need code 3 of 3


def test_offline_sids_are_the_ones_the_service_index_assigns_one_by_one(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(60, 2))
    ids = [f"v{i}" for i in range(60)]
    offline, overflow = assign_sids("v1", ids, codes, disambiguation_size=5)
    index = SidIndex(tmp_path / "index.sqlite", disambiguation_size=5)
    one_by_one, full = {}, 0
    for vid, row in zip(ids, codes.tolist(), strict=True):
        try:
            one_by_one[vid] = index.assign("v1", vid, row, ts=0).sid
        except SidSpaceExhausted:
            full += 1
    index.close()
    assert offline == one_by_one and overflow == full > 0


def test_a_named_catalogue_gives_every_item_a_distinct_full_length_sid():
    emb, pairs, _ = clustered_items(120, {"text": 8, "visual": 8}, num_topics=4, seed=1)
    cfg = load_tokenizer_config(
        REPO_ROOT / "configs" / "test.toml", env={}, codebook_base=16, steps=20, log_every=10
    )
    ids = [f"v{i}" for i in range(120)]
    fit_rows = np.arange(100)  # the last 20 items arrive after training
    fit_pairs = pairs[(pairs < 100).all(axis=1)]
    named = name_catalogue(ids, emb, fit_rows, fit_pairs, cfg, disambiguation_size=64)
    assert named.overflow == 0 and set(named.sids) == set(ids)
    assert len(set(named.sids.values())) == len(ids)
    assert all(len(s) == cfg.num_levels + 1 for s in named.sids.values())
    assert all(named.sids[v][:-1] == tuple(named.codes[i]) for i, v in enumerate(ids))
    report = named.report(fit_rows, fit_pairs)
    assert report["items"] == 120 and report["fit_items"] == 100
    assert report["level_sizes"] == [16, 8, 4]
    assert report["first_code_alignment"]["pairs"] == len(fit_pairs)
