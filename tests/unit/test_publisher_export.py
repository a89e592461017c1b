"""Trainer checkpoint -> a loadable model repository version with the right manifest."""

import numpy as np
import pytest

from plum.checkpoints import CheckpointStore
from publisher.deltas import DeltaLog
from publisher.export import (
    CheckpointError,
    checkpoint_steps,
    export,
    find_exported,
    read_checkpoint,
)
from serving.artifact import ModelRepository
from tests.publisher_support import (
    MAX_PROMPT_LEN,
    SID_VERSION,
    UPLOAD_TS,
    TinyRun,
    assignment,
    records,
    tiny_params,
)
from trainer.vocab import Vocab


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = TinyRun(tmp_path_factory.mktemp("run"))
    run.params = tiny_params(run.cfg, 0)
    run.save(10, run.params, fresh_offsets={0: 4, 1: 7}, newest_event_ts=UPLOAD_TS + 99)
    return run


def test_a_checkpoint_reads_as_the_trainer_wrote_it(run, tmp_path):
    assert checkpoint_steps(run.dir) == [10]
    assert checkpoint_steps(tmp_path / "nothing") == []
    assert not (tmp_path / "nothing").exists()  # looking creates nothing
    ckpt = read_checkpoint(run.dir, 10)
    assert ckpt.step == 10 and ckpt.sid_version == SID_VERSION
    assert ckpt.model_config == run.cfg and ckpt.max_prompt_len == MAX_PROMPT_LEN
    assert ckpt.fresh_offsets == {0: 4, 1: 7}
    assert ckpt.newest_event_ts_ms == UPLOAD_TS + 99 and ckpt.loss is None
    emb = np.asarray(ckpt.params["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(emb, np.asarray(run.params["embed_tokens"]["embedding"]))


def test_a_run_that_averages_its_parameters_publishes_the_average(tmp_path):
    """With [trainer] ema_decay the checkpoint's optimizer state holds the parameters'
    moving average: that is what the gate reads and the model repository gets."""
    run = TinyRun(tmp_path / "run")
    trained, average = tiny_params(run.cfg, 0), tiny_params(run.cfg, 1)
    run.save(10, trained, average=average)
    ckpt = read_checkpoint(run.dir, 10)
    emb = np.asarray(ckpt.params["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(emb, np.asarray(average["embed_tokens"]["embedding"]))
    assert not np.array_equal(emb, np.asarray(trained["embed_tokens"]["embedding"]))
    repo = ModelRepository(tmp_path / "models")
    with DeltaLog(tmp_path / "state") as deltas:
        snapshot = deltas.snapshot(SID_VERSION)
    export(repo, ckpt, snapshot, dtype="float32", gate={"reason": "no_served_model"})
    served = repo.load(1, expect_sid_version=SID_VERSION).params["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(np.asarray(served), emb)


def test_export_writes_a_loadable_version_with_the_right_manifest(run, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    with DeltaLog(tmp_path / "state") as deltas:
        deltas.ingest("t", records([assignment(i) for i in range(6)], "t"))
        snapshot = deltas.snapshot(SID_VERSION)
    ckpt = read_checkpoint(run.dir, 10)
    manifest = export(repo, ckpt, snapshot, dtype="float32", gate={"reason": "no_served_model"})
    assert manifest.version == 1 and repo.versions() == [1]
    artifact = repo.load(1, expect_sid_version=SID_VERSION)
    m = artifact.manifest
    assert (m.step, m.sid_version, m.index_seq) == (10, SID_VERSION, 6)
    assert m.newest_event_ts_ms == UPLOAD_TS + 99 and m.max_prompt_len == MAX_PROMPT_LEN
    assert m.dtype == "float32" and m.gate == {"reason": "no_served_model"}
    assert m.source == {"run_dir": str(run.dir), "step": 10}
    assert m.model_config == run.cfg.to_dict()
    assert artifact.snapshot == snapshot
    assert "opt_state" not in artifact.params and set(artifact.params) == set(run.params)
    np.testing.assert_allclose(
        artifact.params["embed_tokens"]["embedding"], run.params["embed_tokens"]["embedding"]
    )
    assert Vocab.load(artifact.vocab_dir).size == run.vocab.size
    # the same step again (a crash before the ledger recorded it) is the same version
    assert find_exported(repo, ckpt).version == 1
    assert export(repo, ckpt, snapshot, dtype="float32", gate={}).version == 1
    assert repo.versions() == [1]


def test_the_prompt_layout_a_run_trained_in_reaches_the_manifest(run, tmp_path):
    """Serving and the gate prompt as the checkpoint was trained: its [trainer_data]
    prompt_layout travels into the version; a run from before the setting reads "target"."""
    assert read_checkpoint(run.dir, 10).prompt_layout == "target"
    sequence_run = TinyRun(tmp_path / "run")
    sequence_run.save(20, tiny_params(sequence_run.cfg, 0), prompt_layout="sequence")
    ckpt = read_checkpoint(sequence_run.dir, 20)
    assert ckpt.prompt_layout == "sequence"
    repo = ModelRepository(tmp_path / "models")
    with DeltaLog(tmp_path / "state") as deltas:
        snapshot = deltas.snapshot(SID_VERSION)
    export(repo, ckpt, snapshot, dtype="float32", gate={})
    assert repo.load(1).manifest.prompt_layout == "sequence"


def test_bfloat16_export_and_a_snapshot_of_the_wrong_version(run, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    ckpt = read_checkpoint(run.dir, 10)
    with DeltaLog(tmp_path / "state") as deltas:
        deltas.ingest("t", records([assignment(0), assignment(0, "v2")], "t"))
        with pytest.raises(ValueError, match="snapshot of 'v2'"):
            export(repo, ckpt, deltas.snapshot("v2"), dtype="float32", gate={})
        manifest = export(repo, ckpt, deltas.snapshot(SID_VERSION), dtype="bfloat16", gate={})
    assert manifest.dtype == "bfloat16"
    params = repo.load(manifest.version).params
    np.testing.assert_allclose(
        params["embed_tokens"]["embedding"], run.params["embed_tokens"]["embedding"], rtol=1e-2
    )


def test_a_checkpoint_without_the_trainer_meta_is_refused(tmp_path):
    store = CheckpointStore(tmp_path, async_save=False)
    store.save(3, {"params": {"w": np.ones(2, np.float32)}}, {"kind": "cpt"})
    store.close()
    with pytest.raises(CheckpointError, match="not a trainer SFT checkpoint"):
        read_checkpoint(tmp_path, 3)
