"""The tokenizer ablation is fair (same inputs, equal code spaces, held-out pairs) and the
catalogue-growth audit names new uploads with the frozen tokenizer."""

import dataclasses

import numpy as np
import pytest

from plum.config import REPO_ROOT
from streams.simulator.config import load_config as load_simulator_config
from tokenizer.ablation import (
    CONCATENATED,
    code_space,
    concatenate,
    run_variant,
    split_pairs,
    uniform_at_equal_space,
    variant_config,
)
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.growth import REMEDIES, catalogue_growth, collision_sizes, simulated_catalogue
from tokenizer.synthetic import clustered_items

TEST_TOML = REPO_ROOT / "configs" / "test.toml"


def test_uniform_codebooks_get_the_multi_resolution_code_space():
    v2 = TokenizerConfig(codebook_base=128, num_levels=3)
    v1 = uniform_at_equal_space(v2)
    assert v2.level_sizes == (128, 64, 32) and v1.level_sizes == (64, 64, 64)
    assert code_space(v1.level_sizes) == code_space(v2.level_sizes) == 2**18


def test_variant_config_writes_each_variant_as_the_ablation_trains_it():
    v2 = TokenizerConfig(codebook_base=128, num_levels=3)
    v1, v1_concatenated = variant_config("sidv1", v2)
    assert v1_concatenated and v1.level_sizes == (64, 64, 64)
    assert not v1.progressive_masking and v1.contrastive_weight == 0.0
    assert variant_config("sidv2", v2) == (v2, False)
    no_fusion, concatenated = variant_config("sidv2-no-multimodal", v2)
    assert concatenated and no_fusion.level_sizes == (128, 64, 32)
    with pytest.raises(ValueError, match="unknown tokenizer variant"):
        variant_config("sidv3", v2)


def test_concatenation_keeps_every_modality_in_name_order():
    emb = {"text": np.ones((3, 4)), "audio": np.zeros((3, 2))}
    ((name, x),) = concatenate(emb).items()
    assert name == CONCATENATED and x.shape == (3, 6)
    assert np.all(x[:, :2] == 0) and np.all(x[:, 2:] == 1)  # audio before text


def test_held_out_pairs_are_never_trained_on_in_either_order():
    pairs = np.array([[0, 1], [1, 0], [2, 3], [3, 4], [4, 5], [5, 6], [1, 2], [6, 7], [0, 7]])
    train, held = split_pairs(pairs, held_out_share=0.25, seed=1)
    as_set = lambda a: {tuple(sorted(p)) for p in a.tolist()}  # noqa: E731
    assert len(held) == 2 and len(train) == 6  # 8 unique unordered pairs
    assert not as_set(train) & as_set(held)
    assert as_set(train) | as_set(held) == as_set(pairs)
    again_train, again_held = split_pairs(pairs, held_out_share=0.25, seed=1)
    assert np.array_equal(train, again_train) and np.array_equal(held, again_held)


def test_sid_v1_sees_every_modality_at_the_same_code_space_as_v2():
    emb, pairs, _ = clustered_items(200, {"a": 8, "b": 4}, num_topics=4, num_pairs=300, seed=0)
    train, held = split_pairs(pairs, seed=0)
    cfg = dataclasses.replace(
        load_tokenizer_config(TEST_TOML, steps=30), codebook_base=16, log_every=30
    )
    v1 = run_variant("sidv1", emb, train, held, cfg)
    v2 = run_variant("sidv2", emb, train, held, cfg)
    assert v1["inputs"] == [CONCATENATED] and v1["input_dims"] == {CONCATENATED: 12}
    assert v2["inputs"] == ["a", "b"]
    assert v1["level_sizes"] == [8, 8, 8] and v2["level_sizes"] == [16, 8, 4]
    assert v1["code_space"] == v2["code_space"] == 512
    for r in (v1, v2):
        assert r["held_out_pairs"] == len(held)
        assert 0.0 <= r["alignment_cooccurring"] <= 1.0
        assert r["alignment_lift"] == pytest.approx(
            r["alignment_cooccurring"] / max(r["alignment_random"], 1e-9)
        )


def test_collision_sizes_count_videos_per_group_size():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 2], [3, 3], [3, 3]])
    assert collision_sizes(codes) == {"1": 1, "2": 2, "3": 3}


def test_simulated_catalogue_pairs_only_among_the_fitted_videos():
    sim = load_simulator_config(TEST_TOML)
    cat = simulated_catalogue(sim, fit_items=50, growth=2.0)
    assert len(cat.ids) == 150 and len(set(cat.ids)) == 150
    assert {k: v.shape for k, v in cat.embeddings.items()} == {
        m: (150, d) for m, d in zip(sim.modalities, sim.embedding_dims, strict=True)
    }
    assert (
        len(cat.pairs) == 250
        and cat.pairs.max() < 50
        and np.all(cat.pairs[:, 0] != cat.pairs[:, 1])
    )


@pytest.fixture(scope="module")
def small_growth_config() -> TokenizerConfig:
    return dataclasses.replace(
        load_tokenizer_config(TEST_TOML, steps=40), codebook_base=16, log_every=40
    )


def test_growth_audit_tries_remedies_only_below_target(small_growth_config):
    sim = load_simulator_config(TEST_TOML)
    met = catalogue_growth(small_growth_config, sim, fit_items=60, growth=2.0, target=0.0)
    assert met["held_out_items"] == 120 and met["remedies"] == {} and met["restored_by"] is None
    sizes = met["as_configured"]["collision_sizes"]
    assert sum(sizes.values()) == 180
    unique = met["as_configured"]["uniqueness_grown"]
    assert unique == pytest.approx(sizes.get("1", 0) / 180)

    unreachable = catalogue_growth(small_growth_config, sim, fit_items=60, growth=2.0, target=1.01)
    assert list(unreachable["remedies"]) == [name for name, _ in REMEDIES]
    assert unreachable["restored_by"] is None
    both = unreachable["remedies"]["both"]
    assert both["level_sizes"] == [32, 16, 8, 4]
