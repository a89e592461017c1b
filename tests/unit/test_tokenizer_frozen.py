"""The frozen tokenizer the SID service calls: encode, sid_version, input checks."""

import jax
import numpy as np
import pytest

from tokenizer.codebook import init_codebooks
from tokenizer.config import TokenizerConfig
from tokenizer.frozen import ModalityError, TrainedTokenizer, build_model

CFG = TokenizerConfig(
    encoder_hidden=(8,),
    modality_dim=4,
    latent_dim=4,
    decoder_hidden=(8,),
    codebook_base=8,
    num_levels=2,
)
MODS = (("audio", 3), ("text", 5))


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((100, d)).astype(np.float32) for n, d in MODS}
    model = build_model(CFG, MODS)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), {n: v[:2] for n, v in x.items()})["params"]
    stats = {n: {"mean": np.zeros(d, np.float32), "std": np.ones(d, np.float32)} for n, d in MODS}
    t = TrainedTokenizer(
        CFG, MODS, params, tuple(np.ones((k, 4), np.float32) for k in (8, 4)), stats, step=0
    )
    z = np.asarray(t.forward(x)["z"])
    books = init_codebooks(z, CFG.level_sizes, 3, rng)
    return TrainedTokenizer(CFG, MODS, params, tuple(books), stats, step=1), x


def test_encode_is_row_wise_whatever_the_batch_size(tok):
    t, x = tok
    full = t.encode(x)
    assert full.shape == (100, 2) and full.dtype == np.int32
    part = t.encode({n: v[10:13] for n, v in x.items()})
    np.testing.assert_array_equal(part, full[10:13])
    assert t.encode({n: v[:0] for n, v in x.items()}).shape == (0, 2)


def test_sid_version_is_a_content_hash(tok):
    t, _ = tok
    same = TrainedTokenizer(t.config, t.modalities, t.params, t.codebooks, t.stats, step=7)
    assert same.sid_version == t.sid_version and t.sid_version.startswith("sidv2-")
    books = list(t.codebooks)
    books[1] = books[1] + 1e-3
    other = TrainedTokenizer(t.config, t.modalities, t.params, tuple(books), t.stats, step=1)
    assert other.sid_version != t.sid_version


def test_encode_rejects_unknown_missing_or_misshaped_modalities(tok):
    t, x = tok
    with pytest.raises(ModalityError, match="unknown modalities"):
        t.encode({**x, "smell": np.zeros((100, 2))})
    with pytest.raises(ModalityError, match="miss"):
        t.encode({"audio": x["audio"]})
    with pytest.raises(ModalityError, match="expected"):
        t.encode({"audio": x["audio"], "text": x["text"][:, :4]})
