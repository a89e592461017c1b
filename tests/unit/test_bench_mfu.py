"""bench/mfu.py: training FLOPs per token by hand, and MFU only against a known peak."""

from types import SimpleNamespace

import pytest

from bench.mfu import StepCost, peak_flops, retrieve_flops, utilisation
from trainer.config import ModelConfig


def test_flops_per_token_counts_every_matrix_a_token_passes_through_and_attention():
    cfg = ModelConfig(vocab_size=100, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16)
    # per layer: q 8x8, o 8x8, k 8x4, v 8x4 = 192; SwiGLU 3 x 8x16 = 384; output 100x8 = 800
    cost = StepCost.of(cfg, seq_len=10)
    assert cost.matrix_params_per_token == 2 * (192 + 384) + 800
    assert cost.flops_per_token == 6 * 1952 + 12 * 2 * 8 * 10


def test_a_mixture_of_experts_counts_the_routed_experts_and_the_router():
    dense = ModelConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16)
    moe = ModelConfig(
        vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
        num_experts=4, moe_top_k=2,
    )  # fmt: skip
    extra = (
        StepCost.of(moe, 10).matrix_params_per_token
        - StepCost.of(dense, 10).matrix_params_per_token
    )
    assert extra == 384 + 8 * 4  # a second expert's SwiGLU and the router


def test_vocab_must_be_known():
    with pytest.raises(ValueError, match="vocab_size"):
        StepCost.of(ModelConfig(), 10)


def test_peak_is_looked_up_by_device_kind_and_absent_on_a_cpu():
    h200 = SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    assert peak_flops(h200) == (989e12, "NVIDIA H200")
    assert peak_flops(SimpleNamespace(platform="gpu", device_kind="Mystery X1"))[0] is None
    assert peak_flops(SimpleNamespace(platform="cpu", device_kind="cpu"))[0] is None


def test_no_mfu_without_a_peak():
    cfg = ModelConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16)
    got = utilisation(StepCost.of(cfg, 4), 1000.0, "run")  # the test machine's CPU
    assert got["run_mfu"] is None and got["peak_bf16_tflops"] is None
    assert got["run_model_tflops_per_s"] == round(
        StepCost.of(cfg, 4).flops_per_token * 1e3 / 1e12, 4
    )


def test_a_retrieval_costs_the_prompt_once_and_each_beam_per_decoded_slot():
    cfg = ModelConfig(vocab_size=100, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16)
    body, output = 2 * (192 + 384), 800
    prefill = 2 * body * 10 + 2 * output + 4 * 2 * 10**2 * 8
    decode = 3 * (2 * (body + output) + 4 * 2 * 11 * 8) + 3 * (2 * (body + output) + 4 * 2 * 12 * 8)
    assert retrieve_flops(cfg, prompt_len=10, beams=3, sid_slots=3) == prefill + decode
    assert retrieve_flops(cfg, 10, 6, 3) > retrieve_flops(cfg, 10, 3, 3)


def test_the_serving_ceiling_says_whether_closed_loop_clients_can_meet_the_p99_target():
    from bench.serving import compute_ceiling

    cfg = ModelConfig(vocab_size=100, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16)
    flops = retrieve_flops(cfg, 10, 4, 3)
    got = compute_ceiling(cfg, 10, 3, [4], {"beam_4": {"qps": 50.0}}, 100 * flops, 50)
    assert got["qps_needed_for_p99_50ms_at_50_clients"] == 1000.0
    assert got["beam_4"]["ceiling_qps"] == 100.0 and not got["beam_4"]["p99_target_reachable"]
    assert got["beam_4"]["share_of_matmul_rate"] == 0.5
    fast = compute_ceiling(cfg, 10, 3, [4], {}, 2000 * flops, 50)
    assert (
        fast["beam_4"]["p99_target_reachable"]
        and fast["beam_4"]["achieved_model_gflops_per_s"] is None
    )
