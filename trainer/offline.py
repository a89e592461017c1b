"""Training on input that is known in advance: the loop CPT and offline SFT share.

    state = init_state(params, optimizer)
    for batch in batches:                      # CPT: sampled from its corpus;
        state, m = stepper.train(state, batch) #   SFT: examples in time order, `passes` times
        progress line (rate, ETA)              # plum.runtime.Progress

The step is the continuous trainer's (trainer/step.py: jitted, reward-weighted loss,
constant LR after warm-up), the sequences and batches are trainer/prompt.py's, padded
the way trainer/data.py pads a short batch (empty rows, weight 0), so one shape compiles.
What differs from `plum trainer run` (trainer/loop.py) is only where batches come from:
a list instead of Kafka + the history archive, and no checkpoints in between.

Offline SFT (`train_sft`) is continuous training replayed: the examples in their time
order, each seen once per pass. Offline evaluations (`plum bench trainer-quality`) use
it to train on a held-out-by-time split without a broker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from plum.runtime import Progress
from streams.contracts.schema import SftExample
from trainer.config import ModelConfig
from trainer.prompt import (
    Batch,
    SidLookup,
    TrainingSequence,
    UnknownTargetError,
    collate,
    sft_sequence,
)
from trainer.step import (
    OptimizerConfig,
    Stepper,
    TrainState,
    evaluated_params,
    init_state,
    make_optimizer,
)
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

PADDING = TrainingSequence([], 0, 0.0)  # an empty row: no input, no loss (trainer/data.py)


@dataclass(frozen=True)
class FitResult:
    steps: int
    first_loss: float
    final_loss: float  # mean over the last 10% of steps
    tokens: int  # real (non-padding) input tokens trained on


def fit(
    stepper: Stepper,
    state: TrainState,
    batches: Iterable[Batch],
    steps: int,
    name: str,
    log_every_s: float = 10.0,
) -> tuple[TrainState, FitResult]:
    """Train on `batches` (`steps` of them); raises FloatingPointError on a non-finite loss."""
    losses: list[float] = []
    tokens = 0
    progress = Progress(
        name,
        "steps",
        log_every_s,
        total=steps,
        detail=lambda: f"loss {losses[-1]:.4f}" if losses else "compiling",
        logger=log,
    )
    for batch in batches:
        state, m = stepper.train(state, batch)
        loss = float(m.loss)  # blocks: the step is done
        if not np.isfinite(loss):
            raise FloatingPointError(f"{name}: loss is {loss} at step {len(losses) + 1}")
        losses.append(loss)
        tokens += int(batch.mask.sum())
        progress.add(1)
        progress.maybe_report()
    if not losses:
        raise ValueError(f"{name}: no batch to train on")
    progress.report(final=True)
    tail = losses[-max(1, len(losses) // 10) :]
    return state, FitResult(len(losses), losses[0], float(np.mean(tail)), tokens)


# ---------------------------------------------------------------------------- offline SFT


@dataclass(frozen=True)
class SftConfig:
    """Offline SFT: the continuous trainer's optimisation over a fixed example list."""

    passes: int = 1
    batch_size: int = 32
    seq_len: int = 128  # model input length; prompt + target SID must fit seq_len + 1
    max_prompt_len: int = 120
    learning_rate: float = 1e-3  # constant after warm-up
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # Polyak averaging, as [trainer] ema_decay (0 = off)
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.passes < 1 or self.batch_size < 1:
            raise ValueError(f"passes={self.passes} and batch_size={self.batch_size} must be >= 1")
        if self.max_prompt_len > self.seq_len:
            raise ValueError(f"max_prompt_len={self.max_prompt_len} > seq_len={self.seq_len}")

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            self.learning_rate,
            self.warmup_steps,
            self.weight_decay,
            grad_clip=self.grad_clip,
            ema_decay=self.ema_decay,
        )


@dataclass(frozen=True)
class SftResult:
    steps: int
    examples_trained: int  # sequences x passes
    first_loss: float
    final_loss: float  # mean over the last 10% of steps


def sft_sequences(
    examples: Sequence[SftExample], lookup: SidLookup, vocab: Vocab, max_prompt_len: int
) -> tuple[list[TrainingSequence], int]:
    """(training sequences in the examples' order, examples skipped: target without SID)."""
    seqs, skipped = [], 0
    for e in examples:
        try:
            seqs.append(sft_sequence(e, lookup, vocab, max_prompt_len))
        except UnknownTargetError:
            skipped += 1
    return seqs, skipped


def sft_batches(
    seqs: Sequence[TrainingSequence], batch_size: int, seq_len: int, pad_id: int, passes: int
) -> Iterator[Batch]:
    """`passes` passes over `seqs` in order, `batch_size` rows a batch; a pass's last batch
    is filled with empty rows."""
    for _ in range(passes):
        for start in range(0, len(seqs), batch_size):
            rows = list(seqs[start : start + batch_size])
            rows += [PADDING] * (batch_size - len(rows))
            yield collate(rows, seq_len, pad_id)


def train_sft(
    params: Any,
    model_config: ModelConfig,
    vocab: Vocab,
    seqs: Sequence[TrainingSequence],
    cfg: SftConfig,
    name: str = "sft",
) -> tuple[Any, SftResult]:
    """SFT from `params` over `seqs` in order, `cfg.passes` times; returns the new params
    (their moving average when cfg.ema_decay > 0, as the continuous trainer exports)."""
    if not seqs:
        raise ValueError(f"{name}: no training sequence")
    tx = make_optimizer(cfg.optimizer())
    stepper = Stepper(model_config, tx)
    steps = math.ceil(len(seqs) / cfg.batch_size) * cfg.passes
    batches = sft_batches(seqs, cfg.batch_size, cfg.seq_len, vocab.pad_id, cfg.passes)
    # a copy: the jitted step donates its input state, and `params` stays the caller's
    state = init_state(jax.tree.map(jax.numpy.array, params), tx)
    state, result = fit(stepper, state, batches, steps, name, cfg.log_every_s)
    return evaluated_params(state), SftResult(
        result.steps, len(seqs) * cfg.passes, result.first_loss, result.final_loss
    )
