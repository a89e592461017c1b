"""Model FLOPs of a training step and model FLOPs utilisation (MFU).

FLOPs per trained token follow the PaLM paper's appendix B accounting: 6 x the matrix
parameters a token passes through (forward 2, backward 4; the input embedding lookup is
no matrix product, a tied output projection is) + 12 x layers x attention width x sequence
length for the attention scores and their weighted sum (counted in full, as PaLM does,
although a causal mask could skip half). Mixture-of-experts layers count the top-k experts
a token is routed to. MFU = achieved model FLOP/s / the device's peak dense bf16 FLOP/s
(from its vendor's datasheet); on a CPU there is no such peak and MFU is not reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax

from trainer.config import ModelConfig

# Dense bf16 peak FLOP/s by device name (vendor datasheets; SXM parts)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


@dataclass(frozen=True)
class StepCost:
    """Training FLOPs per token of one model at one sequence length."""

    matrix_params_per_token: int
    seq_len: int
    flops_per_token: float

    @classmethod
    def of(cls, cfg: ModelConfig, seq_len: int) -> StepCost:
        if cfg.vocab_size < 1:
            raise ValueError("the model's vocab_size is not set (ModelConfig.with_vocab)")
        d, hd = cfg.d_model, cfg.head_dim
        attention = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2
        ffn = 3 * d * cfg.d_ff
        if cfg.num_experts:
            ffn = cfg.moe_top_k * ffn + d * cfg.num_experts  # routed experts + the router
        matrix = cfg.n_layers * (attention + ffn) + cfg.vocab_size * d  # + output projection
        flops = 6 * matrix + 12 * cfg.n_layers * cfg.n_heads * hd * seq_len
        return cls(matrix, seq_len, float(flops))


def retrieve_flops(cfg: ModelConfig, prompt_len: int, beams: int, sid_slots: int) -> float:
    """Forward model FLOPs of one retrieval by beam search (trainer/beam.py): the prompt's
    prefill (every matrix at every prompt position, the output projection at the last one,
    full prompt x prompt attention as computed) and `sid_slots - 1` decode steps of
    `beams` beams (every matrix incl. the output projection, attention over the prompt and
    the beam's tokens so far)."""
    cost = StepCost.of(cfg, prompt_len)
    output = cfg.vocab_size * cfg.d_model
    body = cost.matrix_params_per_token - output
    width = cfg.n_heads * cfg.head_dim
    prefill = 2 * body * prompt_len + 2 * output + 4 * cfg.n_layers * prompt_len**2 * width
    decode = sum(
        beams * (2 * cost.matrix_params_per_token + 4 * cfg.n_layers * (prompt_len + step) * width)
        for step in range(1, sid_slots)
    )
    return float(prefill + decode)


def matmul_flops_per_s(n: int = 1024, seconds: float = 2.0) -> float:
    """FLOP/s of a float32 n x n matrix product through XLA on this machine's default
    device (every core it uses): the compute ceiling a model's FLOP count is held to."""
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        product(a).block_until_ready()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


def peak_flops(device: Any | None = None) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, the device kind it was looked up by); None on a CPU or an
    accelerator missing from the table."""
    device = device or jax.devices()[0]
    kind = str(getattr(device, "device_kind", device.platform))
    if device.platform == "cpu":
        return None, kind
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in kind.lower():
            return flops, kind
    return None, kind


def utilisation(
    cost: StepCost, tokens_per_s: float, label: str, padded: bool = False
) -> dict[str, Any]:
    """`{label}_tokens_per_s`, `{label}_model_tflops_per_s` and `{label}_mfu` (None without
    a known peak). `padded`: the tokens include padding positions (a full batch's shape)."""
    peak, kind = peak_flops()
    achieved = cost.flops_per_token * tokens_per_s
    return {
        f"{label}_tokens_per_s": round(tokens_per_s, 1),
        f"{label}_tokens_counted": "every position of the batch" if padded else "real tokens",
        f"{label}_model_tflops_per_s": round(achieved / 1e12, 4),
        f"{label}_mfu": round(achieved / peak, 5) if peak else None,
        "flops_per_token": cost.flops_per_token,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "device_kind": kind,
    }


def step_only_seconds(stepper: Any, state: Any, batch: Any, warmup: int = 3, steps: int = 20):
    """Seconds per training step on one batch already made, compiled and warmed first; the
    state is consumed (the step donates it)."""
    for _ in range(warmup):
        state, m = stepper.train(state, batch)
    jax.block_until_ready(m.loss)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = stepper.train(state, batch)
    jax.block_until_ready(m.loss)
    return (time.perf_counter() - t) / steps


__all__ = [
    "PEAK_BF16_FLOPS",
    "StepCost",
    "matmul_flops_per_s",
    "peak_flops",
    "retrieve_flops",
    "step_only_seconds",
    "utilisation",
]
