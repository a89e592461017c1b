"""Train SID-v2 on synthetic clustered multi-modal items and check its Semantic IDs.

The corpus mimics the simulator: latent topic vectors, item vectors around them, one noisy
random linear view per modality (text 32, visual 32, audio 16), co-occurring pairs mostly
within a topic. One model is trained per module (configs/test.toml [tokenizer], ~1000
steps, seconds on CPU) and shared by the tests.
"""

import json
import time

import numpy as np
import pytest

from plum.config import REPO_ROOT
from streams.contracts.schema import UploadEvent, encode
from tokenizer.checkpoint import load_tokenizer, save_tokenizer
from tokenizer.config import load_tokenizer_config
from tokenizer.report import tokenizer_report
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

TEST_CONFIG = REPO_ROOT / "configs" / "test.toml"
DIMS = {"text": 32, "visual": 32, "audio": 16}


@pytest.fixture(scope="module")
def corpus():
    return clustered_items(1000, DIMS, num_topics=16, latent_dim=16, num_pairs=3000, seed=3)


@pytest.fixture(scope="module")
def trained(corpus):
    embeddings, pairs, _ = corpus
    config = load_tokenizer_config(TEST_CONFIG, env={})
    t0 = time.perf_counter()
    tok = train_tokenizer(embeddings, pairs, config)
    return tok, time.perf_counter() - t0


def test_trains_to_unique_sids_before_disambiguation(trained, corpus):
    tok, seconds = trained
    embeddings, pairs, _ = corpus
    rep = tokenizer_report(tok, embeddings, pairs)
    print(
        json.dumps({k: rep[k] for k in ("uniqueness", "alignment", "recon_mse")}), f"{seconds:.1f}s"
    )
    assert rep["uniqueness"] >= 0.95, rep
    assert seconds < 60
    assert all(lv["utilisation"] > 0.5 for lv in rep["levels"]), rep["levels"]
    assert all(v < 0.5 for v in rep["recon_mse"].values()), rep["recon_mse"]


def test_cooccurring_items_share_first_code_far_more_than_random(trained, corpus):
    tok, _ = trained
    embeddings, pairs, _ = corpus
    al = tokenizer_report(tok, embeddings, pairs)["alignment"]
    assert al["cooccurring"] > 3 * al["random"], al


def test_checkpoint_round_trip_gives_identical_codes(trained, corpus, tmp_path):
    tok, _ = trained
    embeddings, _, _ = corpus
    path = save_tokenizer(tok, tmp_path / "ckpt")
    assert path == (tmp_path / "ckpt" / "checkpoints" / str(tok.step)).resolve()  # one layout
    loaded = load_tokenizer(tmp_path / "ckpt")
    assert loaded.sid_version == tok.sid_version
    assert loaded.level_sizes == (128, 64, 32)
    np.testing.assert_array_equal(loaded.encode(embeddings), tok.encode(embeddings))


def test_cli_trains_and_reports_from_an_uploads_file(corpus, tmp_path, capsys):
    from plum.cli import main

    def cli(argv: list[str]) -> int:  # `plum tokenizer ...` through the one command table
        return main(["tokenizer", *argv])

    embeddings, pairs, _ = corpus
    n = 200
    with (tmp_path / "uploads.jsonl").open("wb") as fh:
        for i in range(n):
            event = UploadEvent(
                video_id=f"v{i}",
                ts=1_700_000_000_000 + i,
                title=f"video {i}",
                description="",
                channel="c",
                topics=(),
                duration_s=60.0,
                embeddings={k: tuple(float(x) for x in v[i]) for k, v in embeddings.items()},
            )
            fh.write(encode(event) + b"\n")
        fh.write(b'{"not": "an upload"}\n')
    with (tmp_path / "pairs.jsonl").open("w") as fh:
        for a, b in pairs:
            if a < n and b < n:
                fh.write(json.dumps({"a": f"v{a}", "b": f"v{b}", "count": 1}) + "\n")
    out = tmp_path / "ckpt"
    assert (
        cli(
            [
                "train",
                "--config",
                str(TEST_CONFIG),
                "--data",
                f"simulator:{tmp_path}",
                "--out",
                str(out),
                "--steps",
                "30",
            ]
        )
        == 0
    )
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert version.startswith("sidv2-")
    assert (
        cli(
            [
                "report",
                "--checkpoint",
                str(out),
                "--data",
                f"simulator:{tmp_path}",
                "--json",
                str(tmp_path / "report.json"),
            ]
        )
        == 0
    )
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["items"] == n and rep["sid_version"] == version
    assert rep["alignment"]["pairs"] > 0
