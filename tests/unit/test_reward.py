"""Reward and deterministic sampling (streams/flink/reward.py)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.flink.reward import RewardWeights, keep_example, keep_probability, reward, unit_hash

W = RewardWeights(click=1.0, ratio=1.0, satisfaction=0.5, ratio_cap=1.0, satisfaction_default=0.5)


def test_reward_hand_computed_values():
    # clicked, watched 80%, satisfaction 0.9: 1 + 0.8 + 0.5 * 0.9
    assert reward(True, 0.8, 0.9, W) == pytest.approx(2.25)
    # not clicked, 3% preview, no survey: 0 + 0.03 + 0.5 * 0.5 (default)
    assert reward(False, 0.03, None, W) == pytest.approx(0.28)
    # a replayed video (ratio 1.4) earns no more than a full watch
    assert reward(True, 1.4, 1.0, W) == reward(True, 1.0, 1.0, W) == W.max_reward() == 2.5


def test_weights_change_the_reward_linearly():
    w2 = RewardWeights(click=2.0, ratio=0.0, satisfaction=0.0)
    assert reward(True, 0.5, 0.2, w2) == 2.0
    assert reward(False, 0.5, 0.2, w2) == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        dict(click=-1.0),
        dict(ratio=math.nan),
        dict(satisfaction_default=1.5),
        dict(click=0.0, ratio=0.0, satisfaction=0.0),
    ],
)
def test_bad_weights_are_rejected(bad):
    with pytest.raises(ValueError):
        RewardWeights(**bad)


W2 = RewardWeights(click=0.7, ratio=2.0, satisfaction=1.5, ratio_cap=0.8, satisfaction_default=0.2)


@given(
    w=st.sampled_from([W, W2]),
    clicked=st.booleans(),
    ratio=st.floats(0, 1.5),
    sat=st.one_of(st.none(), st.floats(0, 1)),
)
def test_reward_is_the_documented_sum_and_keep_probability_is_r_over_r_max(w, clicked, ratio, sat):
    # the module docstring's formula, term by term, written out independently
    click_term = w.click if clicked else 0.0
    ratio_term = w.ratio * (ratio if ratio < w.ratio_cap else w.ratio_cap)
    sat_term = w.satisfaction * (w.satisfaction_default if sat is None else sat)
    r = reward(clicked, ratio, sat, w)
    assert r == pytest.approx(click_term + ratio_term + sat_term)
    r_max = w.click + w.ratio * w.ratio_cap + w.satisfaction
    assert w.max_reward() == pytest.approx(r_max)
    assert r <= r_max + 1e-12
    assert keep_probability(r, r_max) == pytest.approx(r / r_max)


def test_keep_probability_is_clipped_outside_zero_and_r_max():
    assert keep_probability(3.0, 2.0) == 1.0
    assert keep_probability(-1.0, 2.0) == 0.0
    assert keep_probability(0.5, 2.0) == 0.25


@given(st.text(min_size=1, max_size=40))
def test_unit_hash_is_the_blake2b_prefix_over_2_to_64(event_id):
    u = unit_hash(event_id)
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).hexdigest()
    assert u == int(digest, 16) / 2**64 and u < 1.0
    assert u == unit_hash(event_id)
    assert unit_hash(event_id, salt="x") != u or event_id == ""


def test_unit_hash_does_not_depend_on_the_process():
    # Python's hash() is salted per process; ours must not be.
    code = "from streams.flink.reward import unit_hash; print(repr(unit_hash('s7-w000000042')))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert outs == {repr(unit_hash("s7-w000000042")) + "\n"}


def test_keep_is_certain_at_r_max_and_never_at_zero():
    assert all(keep_example(f"e{i}", W.max_reward(), W.max_reward()) for i in range(200))
    assert not any(keep_example(f"e{i}", 0.0, W.max_reward()) for i in range(200))


@settings(deadline=None, max_examples=10)
@given(p=st.floats(0.1, 0.9))
def test_sampling_rate_matches_the_probability(p):
    n = 4000
    kept = sum(keep_example(f"evt-{i}", p, 1.0) for i in range(n))
    # Binomial(n, p): 5 standard deviations.
    assert abs(kept / n - p) < 5 * math.sqrt(p * (1 - p) / n)
