"""SID report metrics, the tokenizer config, the frozen encoder and the data readers."""

import json
import math

import numpy as np
import pytest

from plum.config import REPO_ROOT, ConfigError
from streams.contracts.schema import UploadEvent, encode
from tokenizer.config import TokenizerConfig, load_tokenizer_config
from tokenizer.data import load_items
from tokenizer.report import first_code_alignment, level_usage, sid_uniqueness


def test_uniqueness_counts_items_whose_full_sid_is_shared_by_no_other():
    codes = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 3], [1, 1, 2]])
    assert sid_uniqueness(codes) == 0.5


def test_level_usage_perplexity_is_k_for_uniform_and_1_for_constant():
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0]])
    lv1, lv2 = level_usage(codes, (4, 8))
    assert lv1["used"] == 4 and lv1["utilisation"] == 1.0 and math.isclose(lv1["perplexity"], 4.0)
    assert lv2["used"] == 1 and lv2["utilisation"] == 1 / 8 and math.isclose(lv2["perplexity"], 1.0)


def test_alignment_of_pairs_sharing_first_code():
    codes = np.array([[0, 5], [0, 6], [1, 5], [2, 5]])
    al = first_code_alignment(codes, np.array([[0, 1], [0, 2]]), np.random.default_rng(0))
    assert al["pairs"] == 2 and al["cooccurring"] == 0.5
    al2 = first_code_alignment(codes, np.array([[0, 1]]), np.random.default_rng(0), levels=2)
    assert al2["cooccurring"] == 0.0


def test_config_level_sizes_halve_per_level_unless_uniform():
    assert TokenizerConfig().level_sizes == (2048, 1024, 512)
    assert TokenizerConfig(codebook_base=64, num_levels=4).level_sizes == (64, 32, 16, 8)
    assert TokenizerConfig(codebook_base=64, multi_resolution=False).level_sizes == (64, 64, 64)
    with pytest.raises(ValueError, match="level sizes"):
        TokenizerConfig(codebook_base=4, num_levels=3)


@pytest.mark.parametrize("name", ["test", "demo", "paper"])
def test_config_files_have_a_valid_tokenizer_section(name):
    cfg = load_tokenizer_config(REPO_ROOT / "configs" / f"{name}.toml", env={})
    assert cfg.num_levels == 3
    if name == "paper":
        assert cfg.level_sizes == (2048, 1024, 512)


def test_config_env_override_and_round_trip(tmp_path):
    cfg = load_tokenizer_config(
        REPO_ROOT / "configs" / "test.toml", env={"PLUM_TOKENIZER__CODEBOOK_BASE": "32"}
    )
    assert cfg.codebook_base == 32
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "bad.toml").write_text("[tokenizer]\ncodebok_base = 3\n")
    with pytest.raises(ConfigError, match="codebok_base"):
        load_tokenizer_config(tmp_path / "bad.toml", env={})


def test_uploads_and_pairs_files_load_into_aligned_arrays(tmp_path):
    lines = []
    for i in range(4):
        lines.append(
            encode(
                UploadEvent(
                    f"v{i}", 1, "t", "", "c", (), 10.0, {"text": (float(i), 0.0), "audio": (1.0,)}
                )
            )
        )
    lines.append(b'{"video_id": "bad"}')
    (tmp_path / "uploads.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"a": "v0", "b": "v3", "count": 2}) + "\n" + '["v1", "v2"]\n' + "v2 vX\n"
    )
    items = load_items(f"simulator:{tmp_path}")
    assert items.ids == ("v0", "v1", "v2", "v3")
    assert items.embeddings["text"].shape == (4, 2) and items.embeddings["audio"].shape == (4, 1)
    np.testing.assert_array_equal(items.embeddings["text"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(items.pairs, [[0, 3], [1, 2]])
