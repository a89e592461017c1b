"""The optimisation step shared by CPT and continuous SFT: weighted next-token loss, AdamW.

Loss (paper eq. 3 when the weights are rewards):

    L = sum_{b,t} w[b,t] * CE(logits[b,t], target[b,t]) / #{(b,t): w[b,t] > 0}  + load balance

Normalising by the number of trained tokens (not by sum w) keeps the reward's scale in
the gradient: a batch of low-reward examples moves the model less, which is the point of
reward weighting. With reward-sampled examples every weight is 1 and this is the plain
mean cross-entropy over target tokens.

The learning rate is constant after a linear warm-up (the paper's continuous training
never decays it: the model must keep absorbing new data at the same pace).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainer.config import ModelConfig
from trainer.model import Transformer
from trainer.prompt import Batch
from trainer.sharding import global_batch

# The root of every step's dropout key (each step folds in its number).
DROPOUT_SEED = 0x5EED


@dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-4  # constant after warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0  # global-norm clipping; 0 = off
    # Polyak averaging of the parameters (0 = off): the optimizer state also keeps
    # ema = d * ema + (1 - d) * params after every step, d = min(ema_decay, (1 + n) / (10 + n))
    # at the n-th step, and `evaluated_params` hands that average to evaluation and export.
    # It smooths out the step-to-step noise of a constant learning rate, as a decayed rate
    # would, without slowing the training down. The price is lag: the average weighs the
    # last ~1 / (1 - ema_decay) steps, so a continuously trained model that serves it takes
    # that many more steps to reflect new data (see [trainer] ema_decay).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    if cfg.warmup_steps == 0:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
            optax.constant_schedule(cfg.learning_rate),
        ],
        [cfg.warmup_steps],
    )


class ParamsEmaState(NamedTuple):
    count: jax.Array  # int32 scalar: steps averaged
    ema: Any  # the parameters' exponential moving average


def params_ema(decay: float) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters after each update; the
    updates pass through unchanged. Its decay ramps up as min(decay, (1 + n) / (10 + n)),
    so the first steps (random init) fade out quickly. Must be last in a chain: it
    averages params + the updates it receives."""

    def init(params: Any) -> ParamsEmaState:
        # a copy: a train step donates its state, and one buffer cannot be donated twice
        return ParamsEmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params))

    def update(updates: Any, state: ParamsEmaState, params: Any = None):
        if params is None:
            raise ValueError("params_ema needs the parameters")
        new_params = optax.apply_updates(params, updates)
        n = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, new_params)
        return updates, ParamsEmaState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts.append(
        optax.adamw(
            learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay
        )
    )
    if cfg.ema_decay:
        parts.append(params_ema(cfg.ema_decay))
    return optax.chain(*parts)


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def evaluated_params_of_saved(state: Mapping[str, Any]) -> Any:
    """`evaluated_params` of a TrainState read back without a target (plain dicts and
    lists, plum.checkpoints.CheckpointStore.restore_untyped): the optimizer chain's
    ParamsEmaState is the mapping with exactly the keys {"count", "ema"}."""
    parts = state.get("opt_state")
    for part in parts if isinstance(parts, (list, tuple)) else ():
        if isinstance(part, Mapping) and set(part) == set(ParamsEmaState._fields):
            return part["ema"]
    return state["params"]


def evaluated_params(state: TrainState) -> Any:
    """The parameters to evaluate, export and serve: the moving average when the optimizer
    keeps one (OptimizerConfig.ema_decay), else the trained parameters themselves."""
    parts = state.opt_state if isinstance(state.opt_state, tuple) else (state.opt_state,)
    for part in parts:
        if isinstance(part, ParamsEmaState):
            return part.ema
    return state.params


class StepMetrics(NamedTuple):
    loss: jax.Array  # weighted cross-entropy (without the load-balance term)
    load_balance: jax.Array
    tokens: jax.Array  # target tokens trained on
    grad_norm: jax.Array


def weighted_loss(
    params: Any,
    model: Transformer,
    batch: Mapping[str, jax.Array],
    dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """Weighted next-token cross-entropy; with `dropout_rng` (and `config.dropout` > 0) the
    model runs in training mode."""
    train = dropout_rng is not None and model.config.dropout > 0
    out = model.apply(
        {"params": params},
        batch["inputs"],
        attention_mask=batch["mask"],
        train=train,
        rngs={"dropout": dropout_rng} if train else None,
    )
    logp = jax.nn.log_softmax(out.logits, axis=-1)  # [batch, time, vocab]
    ce = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"]
    tokens = jnp.sum(w > 0)
    loss = jnp.sum(w * ce) / jnp.maximum(tokens, 1)
    return loss + out.load_balance_loss, (loss, out.load_balance_loss, tokens)


def _train_step(
    state: TrainState, batch: Mapping[str, jax.Array], model: Transformer, tx
) -> tuple[TrainState, StepMetrics]:
    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)
    # The dropout mask of a step is a function of the step number alone, so a run resumed
    # from a checkpoint draws the same masks as one that never stopped.
    dropout_rng = jax.random.fold_in(jax.random.key(DROPOUT_SEED), state.step)
    (_, (loss, balance, tokens)), grads = grad_fn(state.params, model, batch, dropout_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, StepMetrics(loss, balance, tokens, optax.tree.norm(grads))


def _eval_loss(params: Any, batch: Mapping[str, jax.Array], model: Transformer) -> jax.Array:
    return weighted_loss(params, model, batch)[1][0]


def batch_arrays(batch: Batch) -> dict[str, np.ndarray]:
    return {
        "inputs": batch.inputs,
        "targets": batch.targets,
        "weights": batch.weights,
        "mask": batch.mask,
    }


class Stepper:
    """Jitted train and eval steps for one model config and optimizer.

    `state_sharding` / `batch_sharding` (from trainer/sharding.py) pin where the state
    and the batch live; without them everything sits on the default device. Across
    processes (jax.distributed) each process passes only its rows of the global batch to
    `train` / `eval_loss`, and every process must call them in the same order.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        tx: optax.GradientTransformation,
        state_sharding: Any = None,
        batch_sharding: Any = None,
    ) -> None:
        model = Transformer(model_config)
        self.model_config = model_config
        self.tx = tx
        self.batch_sharding = batch_sharding
        kwargs = {}
        if state_sharding is not None:
            kwargs = {
                "in_shardings": (state_sharding, batch_sharding),
                "out_shardings": (state_sharding, None),
            }
        self._train = jax.jit(
            functools.partial(_train_step, model=model, tx=tx), donate_argnums=0, **kwargs
        )
        self._eval = jax.jit(functools.partial(_eval_loss, model=model))

    def put_batch(self, batch: Batch) -> dict[str, jax.Array]:
        arrays = batch_arrays(batch)
        if self.batch_sharding is None:
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        return global_batch(arrays, self.batch_sharding)

    def train(self, state: TrainState, batch: Batch) -> tuple[TrainState, StepMetrics]:
        return self._train(state, self.put_batch(batch))

    def eval_loss(self, params: Any, batch: Batch) -> float:
        return float(self._eval(params, self.put_batch(batch)))
