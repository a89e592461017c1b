"""The training step: weighted loss, constant learning rate, FSDP sharding rule, multi-device."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from trainer.config import TINY
from trainer.model import Transformer, init_params
from trainer.prompt import Batch, TrainingSequence, collate
from trainer.sharding import _leaf_spec, make_mesh
from trainer.step import (
    DROPOUT_SEED,
    OptimizerConfig,
    ParamsEmaState,
    Stepper,
    batch_arrays,
    evaluated_params,
    evaluated_params_of_saved,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    weighted_loss,
)

CFG = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=32).with_vocab(50)


def _batch(weight: float = 1.0, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    seqs = [TrainingSequence(rng.integers(1, 50, 12).tolist(), 6, weight) for _ in range(4)]
    return collate(seqs, seq_len=16, pad_id=0)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def _arrays(batch):
    return {k: jax.numpy.asarray(v) for k, v in batch_arrays(batch).items()}


def _loss(params, batch):
    return float(weighted_loss(params, Transformer(CFG), _arrays(batch))[1][0])


def test_loss_scales_with_the_reward_weight(params):
    assert _loss(params, _batch(2.0)) == pytest.approx(2 * _loss(params, _batch(1.0)), rel=1e-5)


def test_zero_weights_train_on_nothing(params):
    assert _loss(params, _batch(0.0)) == 0.0


def test_random_init_loss_is_near_log_vocab(params):
    assert _loss(params, _batch()) == pytest.approx(np.log(50), rel=0.1)


def test_learning_rate_is_constant_after_warm_up():
    sched = learning_rate_schedule(OptimizerConfig(learning_rate=1e-3, warmup_steps=10))
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    for step in (10, 1_000, 1_000_000):
        assert float(sched(step)) == pytest.approx(1e-3)


def test_steps_fit_a_fixed_batch(params):
    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0))
    stepper = Stepper(CFG, tx)
    state = init_state(params, tx)
    batch = _batch()
    first = stepper.eval_loss(state.params, batch)
    for _ in range(30):
        state, m = stepper.train(state, batch)
    assert int(state.step) == 30
    assert int(m.tokens) == int((batch.weights > 0).sum())
    assert stepper.eval_loss(state.params, batch) < 0.5 * first


DROPPED = dataclasses.replace(CFG, dropout=0.3)


def _fresh_params():
    return init_params(CFG, jax.random.PRNGKey(0))  # a Stepper's train donates its state


def test_dropout_zero_trains_exactly_as_without_it():
    params, batch = _fresh_params(), _arrays(_batch())
    plain = weighted_loss(params, Transformer(CFG), batch)[1][0]
    with_key = weighted_loss(params, Transformer(CFG), batch, jax.random.key(1))[1][0]
    assert float(with_key) == float(plain)


def test_dropout_changes_the_training_loss_only():
    params, batch = _fresh_params(), _arrays(_batch())
    model = Transformer(DROPPED)
    clean = float(weighted_loss(params, Transformer(CFG), batch)[1][0])
    # evaluation (no key) never drops
    assert float(weighted_loss(params, model, batch)[1][0]) == clean
    a = float(weighted_loss(params, model, batch, jax.random.key(1))[1][0])
    b = float(weighted_loss(params, model, batch, jax.random.key(2))[1][0])
    assert a != clean and b != clean and a != b
    assert float(weighted_loss(params, model, batch, jax.random.key(1))[1][0]) == a


def test_a_steps_dropout_masks_come_from_its_step_number():
    """The step's key is the seed folded with the step number: the same at the same step
    (a run resumed from a checkpoint draws the masks of one that never stopped), different
    from one step to the next."""
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
    stepper = Stepper(DROPPED, tx)
    batch = _batch()
    model = Transformer(DROPPED)

    def expected(step: int) -> float:
        key = jax.random.fold_in(jax.random.key(DROPOUT_SEED), step)
        return float(weighted_loss(_fresh_params(), model, _arrays(batch), key)[1][0])

    state = init_state(_fresh_params(), tx)
    _, metrics = stepper.train(state, batch)
    assert float(metrics.loss) == pytest.approx(expected(0), rel=1e-6)
    assert expected(0) != expected(1)
    resumed = init_state(_fresh_params(), tx).replace(step=jax.numpy.asarray(1, jax.numpy.int32))
    _, metrics = stepper.train(resumed, batch)
    assert float(metrics.loss) == pytest.approx(expected(1), rel=1e-6)
    assert float(metrics.loss) != pytest.approx(expected(0), rel=1e-6)


def test_without_averaging_the_trained_parameters_are_evaluated():
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
    state, _ = Stepper(CFG, tx).train(init_state(_fresh_params(), tx), _batch())
    assert evaluated_params(state) is state.params
    assert not any(isinstance(part, ParamsEmaState) for part in state.opt_state)


def test_the_average_follows_its_recurrence_over_the_trained_parameters():
    """ema_0 = init; after step n (0-based) ema = d_n * ema + (1 - d_n) * params_n with
    d_n = min(decay, (1 + n) / (10 + n)); the trained parameters are untouched by it."""
    decay = 0.9
    plain_tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0))
    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0, ema_decay=decay))
    plain, averaged = init_state(_fresh_params(), plain_tx), init_state(_fresh_params(), tx)
    plain_step, averaged_step = Stepper(CFG, plain_tx), Stepper(CFG, tx)
    expected = jax.tree.map(np.asarray, _fresh_params())
    for n in range(12):
        batch = _batch(seed=n)
        plain, _ = plain_step.train(plain, batch)
        averaged, _ = averaged_step.train(averaged, batch)
        d = min(decay, (1 + n) / (10 + n))
        expected = jax.tree.map(
            lambda e, p, d=d: d * e + (1 - d) * np.asarray(p), expected, plain.params
        )
    # averaging changes nothing about the training itself
    for a, b in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = evaluated_params(averaged)
    assert got is not averaged.params
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(averaged.params), strict=True)
    ]
    assert max(moved) > 1e-4  # the average lags the trained parameters


def test_a_saved_state_read_back_untyped_yields_its_average(tmp_path):
    from plum.checkpoints import CheckpointStore

    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0, ema_decay=0.5))
    plain_tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0))
    averaged, _ = Stepper(CFG, tx).train(init_state(_fresh_params(), tx), _batch())
    plain, _ = Stepper(CFG, plain_tx).train(init_state(_fresh_params(), plain_tx), _batch())
    for name, state in (("averaged", averaged), ("plain", plain)):
        store = CheckpointStore(tmp_path / name, async_save=False)
        store.save(1, state, {"kind": "sft"})
        saved, _ = store.restore_untyped(1)
        store.close()
        want = evaluated_params(state)
        got = evaluated_params_of_saved(saved)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert evaluated_params(averaged) is not averaged.params


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_an_average_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        OptimizerConfig(ema_decay=decay)


@pytest.mark.parametrize(
    ("shape", "fsdp", "spec"),
    [
        ((64, 32), 4, ("fsdp", None)),  # largest dim
        ((30, 64), 4, (None, "fsdp")),  # first dim does not divide
        ((3, 5), 2, ()),  # nothing divides: replicated
        ((), 2, ()),  # scalars replicated
        ((64, 32), 1, ()),  # no fsdp axis
    ],
)
def test_fsdp_shards_the_largest_evenly_divisible_dimension(shape, fsdp, spec):
    assert tuple(_leaf_spec(shape, fsdp)) == spec


def test_mesh_takes_all_devices_for_data_by_default():
    mesh = make_mesh()
    assert mesh.shape == {"data": len(jax.devices()), "fsdp": 1}
    with pytest.raises(ValueError, match="fsdp"):
        make_mesh(fsdp=len(jax.devices()) + 1)


MULTI_DEVICE = r"""
import dataclasses, json
import jax, numpy as np
from trainer.config import TINY
from trainer.model import init_params
from trainer.prompt import TrainingSequence, collate
from trainer.sharding import batch_sharding, make_mesh, state_shardings
from trainer.step import OptimizerConfig, Stepper, init_state, make_optimizer

cfg = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=32).with_vocab(64)
rng = np.random.default_rng(0)
batches = [
    collate([TrainingSequence(rng.integers(1, 64, 14).tolist(), 1) for _ in range(8)], 16, 0)
    for _ in range(5)
]
tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
out = {}
for name, (data, fsdp, n) in {"single": (1, 1, 1), "dp2_fsdp2": (2, 2, 4)}.items():
    mesh = make_mesh(data, fsdp, jax.devices()[:n])
    params = init_params(cfg, jax.random.PRNGKey(0))
    shard = lambda tree: state_shardings(tree, mesh)
    state = init_state(params, tx)
    state = jax.device_put(state, shard(state))
    stepper = Stepper(cfg, tx, shard(state), batch_sharding(mesh))
    losses = []
    for b in batches:
        state, m = stepper.train(state, b)
        losses.append(float(m.loss))
    emb = state.params["embed_tokens"]["embedding"]
    out[name] = {"losses": losses, "devices": len(emb.sharding.device_set),
                 "shard_rows": emb.addressable_shards[0].data.shape[0]}
print(json.dumps(out))
"""


def test_data_parallel_fsdp_on_four_cpu_devices_matches_one_device(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dp2_fsdp2"]["devices"] == 4
    assert out["dp2_fsdp2"]["shard_rows"] == 64 // 2  # vocab rows split over the fsdp axis
    np.testing.assert_allclose(out["dp2_fsdp2"]["losses"], out["single"]["losses"], rtol=2e-4)
