"""Trainer checkpoints: async save/restore round trip, damaged newest falls back, CPT output."""

import contextlib
import dataclasses
import resource
import shutil

import jax
import numpy as np
import pytest

from plum.checkpoints import CheckpointSaveError, CheckpointStore, NoCheckpointError
from streams.contracts import schema
from trainer.config import TINY, VocabConfig
from trainer.cpt import (
    CptConfig,
    build_corpus,
    load_model,
    sample_batch,
    save_cpt_checkpoint,
    train_cpt,
    vocab_for_corpus,
)
from trainer.model import init_params
from trainer.prompt import SidLookup
from trainer.step import OptimizerConfig, init_state, make_optimizer

CFG = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=64)


def _state():
    tx = make_optimizer(OptimizerConfig())
    return init_state(init_params(CFG.with_vocab(40), jax.random.PRNGKey(1)), tx)


def test_state_and_meta_round_trip(tmp_path):
    state = _state()
    store = CheckpointStore(tmp_path, async_save=True)
    store.save(7, state, {"position": {"fresh_offsets": {"0": 12}}, "digest": str(2**63 + 5)})
    store.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    step, restored, meta = store.restore_latest(abstract)
    store.close()
    assert step == 7
    assert meta["digest"] == str(2**63 + 5)
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    state = _state()
    store = CheckpointStore(tmp_path, async_save=False)
    store.save(1, state, {"n": 1})
    store.save(2, state, {"n": 2})
    for path in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    step, _, meta = store.restore_latest(abstract)
    assert (step, meta["n"]) == (1, 1)
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    with pytest.raises(NoCheckpointError):
        store.restore_latest(abstract)
    store.close()


def _corpus_inputs():
    uploads = [
        schema.UploadEvent(f"v{i}", 0, f"title {i % 3}", "", "ch", (f"topic{i % 2}",), 60.0, {})
        for i in range(6)
    ]
    watches = [
        schema.WatchEvent(
            f"e{u}{k}", f"u{u}", f"v{(u + k) % 6}", k * 60_000, 30.0, 60.0, True, "home"
        )
        for u in range(4)
        for k in range(5)
    ]
    sids = SidLookup("sv1", {f"v{i}": (i % 4, i // 4, 0, 0) for i in range(6)})
    return uploads, watches, sids


def test_cpt_trains_both_halves_of_the_mixture_and_saves_a_loadable_checkpoint(tmp_path):
    uploads, watches, lookup = _corpus_inputs()
    vocab = vocab_for_corpus(
        uploads, VocabConfig(text_vocab_size=300, disambiguation_size=2), (4, 2, 1)
    )
    corpus = build_corpus(uploads, watches, lookup, vocab, seq_len=48)
    assert len(corpus.metadata) == 12 and len(corpus.behaviour) == 4
    cfg = CptConfig(steps=25, batch_size=8, seq_len=48, learning_rate=3e-3, warmup_steps=0)
    metas = [
        sample_batch(corpus, cfg, np.random.default_rng(s), vocab.pad_id)[1] for s in range(200)
    ]
    assert np.mean(metas) == pytest.approx(4.0, abs=0.4)  # 50/50 of 8 rows
    result = train_cpt(cfg, CFG, vocab, corpus, tmp_path / "cpt")
    assert result.final_loss < result.first_loss
    loaded = load_model(tmp_path / "cpt")
    assert loaded.step == 25 and loaded.meta["sid_version"] == "sv1"
    assert loaded.model_config.vocab_size == vocab.size == loaded.vocab.size
    assert loaded.params["embed_tokens"]["embedding"].shape == (vocab.size, 32)


def test_an_untrained_start_saved_as_step_0_is_what_the_trainer_loads_as_its_cpt(tmp_path):
    uploads, _, _ = _corpus_inputs()
    vocab = vocab_for_corpus(
        uploads, VocabConfig(text_vocab_size=300, disambiguation_size=2), (4, 2, 1)
    )
    model = CFG.with_vocab(vocab.size)
    params = init_params(model, jax.random.PRNGKey(7))
    meta = {"kind": "cpt", "model_config": model.to_dict(), "sid_version": "sv1"}
    save_cpt_checkpoint(tmp_path / "cpt", 0, params, vocab, meta)
    loaded = load_model(tmp_path / "cpt")
    assert loaded.step == 0 and loaded.model_config == model and loaded.meta["sid_version"] == "sv1"
    assert loaded.vocab.size == vocab.size
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded.params, params)))
    with pytest.raises(ValueError, match="model_config"):
        save_cpt_checkpoint(tmp_path / "other", 0, params, vocab, {"kind": "cpt"})


def test_cpt_refuses_a_corpus_without_any_sid():
    uploads, watches, _ = _corpus_inputs()
    vocab = vocab_for_corpus(uploads, VocabConfig(text_vocab_size=300), (4, 2, 1))
    with pytest.raises(ValueError, match="empty CPT corpus"):
        build_corpus(uploads, watches, SidLookup("sv1", {}), vocab, seq_len=48)


@contextlib.contextmanager
def _disk_full():
    """Every write that grows a file fails with EFBIG in this process (root included):
    RLIMIT_FSIZE 0, as a full disk would refuse them. Python ignores SIGXFSZ."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("async_save", [False, True])
def test_a_save_on_a_full_disk_fails_keeps_the_last_good_step_and_the_next_succeeds(
    tmp_path, async_save
):
    state = _state()
    store = CheckpointStore(tmp_path, max_to_keep=2, async_save=async_save)
    store.save(1, state, {"n": 1})
    store.save(2, state, {"n": 2})
    store.wait()
    with _disk_full():
        for step in (3, 4, 5):  # more failures than max_to_keep: no good step is deleted for them
            with pytest.raises(CheckpointSaveError, match=r"checkpoint step \d+ was not saved"):
                store.save(step, state, {"n": step})
                store.wait()
    assert store.steps() == [1, 2]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    assert store.restore_latest(abstract)[2] == {"n": 2}
    store.save(6, state, {"n": 6})  # the disk takes writes again
    store.wait()
    assert store.steps() == [2, 6]
    store.close()
    again = CheckpointStore(tmp_path, async_save=False)
    step, restored, meta = again.restore_latest(abstract)
    again.close()
    assert (step, meta) == (6, {"n": 6})
    jax.tree.map(np.testing.assert_array_equal, restored, state)


@pytest.mark.parametrize(
    ("saved", "now", "refused"),
    [
        (0.0, 0.0, False),
        (0.999, 0.99, False),
        (None, 0.0, False),
        (0.0, 0.999, True),
        (None, 0.999, True),
        (0.999, 0.0, True),
    ],
)
def test_a_run_resumes_only_with_averaging_switched_as_its_checkpoints(
    tmp_path, saved, now, refused
):
    """The optimizer state's layout differs with and without the average: a switched
    config is refused by name (a run written before the setting existed had none)."""
    from trainer.loop import AveragingMismatchError, TrainerConfig, check_averaging

    meta = {"trainer_config": {} if saved is None else {"ema_decay": saved}}
    cfg = TrainerConfig(ema_decay=now)
    if refused:
        with pytest.raises(AveragingMismatchError, match="ema_decay.*new run_dir"):
            check_averaging(meta, cfg, tmp_path)
    else:
        check_averaging(meta, cfg, tmp_path)


@pytest.mark.parametrize(
    ("saved", "now", "refused"),
    [
        (None, "target", False),
        ("sequence", "sequence", False),
        (None, "sequence", True),
        ("target", "sequence", True),
        ("sequence", "target", True),
    ],
)
def test_a_run_resumes_only_in_the_prompt_layout_its_checkpoints_were_trained_in(
    tmp_path, saved, now, refused
):
    """Every prompt of a run is written one way; a run from before the setting existed
    was trained in "target"."""
    from trainer.data import DataConfig
    from trainer.loop import PromptLayoutMismatchError, check_prompt_layout

    meta = {"data_config": {} if saved is None else {"prompt_layout": saved}}
    data_cfg = DataConfig(prompt_layout=now)
    if refused:
        with pytest.raises(PromptLayoutMismatchError, match="prompt_layout.*new run_dir"):
            check_prompt_layout(meta, data_cfg, tmp_path)
    else:
        check_prompt_layout(meta, data_cfg, tmp_path)
