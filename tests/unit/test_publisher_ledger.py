"""The ledger: decisions once (deferred excepted), the target written with the publish,
rollback marks, endpoint acknowledgements; everything survives a reopen."""

import pytest

from publisher.ledger import (
    DEFERRED,
    PUBLISHED,
    REJECTED,
    ROLLED_BACK,
    EndpointState,
    Ledger,
    LedgerError,
)


def test_everything_survives_a_reopen(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.decide(5, REJECTED, "non_finite_params", {"non_finite_arrays": 1})
        ledger.publish(10, 1, "no_served_model", {"recall_candidate": 0.5})
        ledger.acknowledge("http://a", model_version=1, sid_version="v1", delta_seq=7)
    with Ledger(tmp_path) as ledger:
        assert ledger.target() == 1
        assert ledger.decision(5).decision == REJECTED
        assert ledger.decision(5).metrics == {"non_finite_arrays": 1}
        published = ledger.decision(10)
        assert (published.decision, published.version, published.reason) == (
            PUBLISHED,
            1,
            "no_served_model",
        )
        assert ledger.endpoint("http://a") == EndpointState(
            "http://a", 1, "v1", 7, ledger.endpoint("http://a").at_ms
        )
        assert ledger.last_decided_step() == 10
        assert [d.step for d in ledger.decisions()] == [10, 5]


def test_a_step_is_decided_once_unless_deferred(tmp_path):
    with Ledger(tmp_path) as ledger:
        assert ledger.last_decided_step() is None
        assert ledger.decide(3, DEFERRED, "too_few_examples")
        assert ledger.last_decided_step() is None  # a deferral decides nothing
        assert ledger.decide(3, DEFERRED, "too_few_examples")
        assert ledger.decide(3, REJECTED, "recall_regressed")
        assert not ledger.decide(3, DEFERRED, "too_few_examples")
        assert not ledger.decide(3, REJECTED, "other")
        assert ledger.decision(3).reason == "recall_regressed"
        with pytest.raises(LedgerError, match="already rejected"):
            ledger.publish(3, 1, "x")
        with pytest.raises(ValueError):
            ledger.decide(4, PUBLISHED, "x")
        assert ledger.last_decided_step() == 3


def test_rollback_moves_the_target_and_marks_later_versions(tmp_path):
    with Ledger(tmp_path) as ledger:
        for step, version in ((10, 1), (20, 2), (30, 3)):
            ledger.publish(step, version, "recall_within_margin")
        assert ledger.target() == 3 and ledger.previous_version() == 2
        assert ledger.rollback(2) == [3]
        assert ledger.target() == 2
        assert ledger.decision(30).decision == ROLLED_BACK
        assert ledger.last_decided_step() == 30  # step 30 is never a candidate again
        assert ledger.previous_version() == 1 and ledger.published_versions() == [1, 2]
        assert ledger.rollback(1) == [2]
        assert ledger.previous_version() is None
        assert ledger.rollback(3) == []  # forward again: 3 is published once more
        assert ledger.decision(30).decision == PUBLISHED and ledger.target() == 3
        assert [t["cause"] for t in ledger.targets()] == ["rollback"] * 3 + ["publish step 30"] + [
            "publish step 20",
            "publish step 10",
        ]


def test_delta_acknowledgements_keep_the_model_version(tmp_path):
    with Ledger(tmp_path) as ledger:
        assert ledger.endpoint("http://a") == EndpointState("http://a")
        ledger.acknowledge_deltas("http://a", "v1", 4)
        assert ledger.endpoint("http://a").model_version is None
        ledger.acknowledge("http://a", model_version=2, sid_version="v1", delta_seq=4)
        ledger.acknowledge_deltas("http://a", "v1", 9)
        state = ledger.endpoint("http://a")
        assert (state.model_version, state.sid_version, state.delta_seq) == (2, "v1", 9)
        assert [e.endpoint for e in ledger.endpoints()] == ["http://a"]
