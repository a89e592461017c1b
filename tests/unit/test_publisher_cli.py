"""`plum publish status | rollback` in-process (no broker; `once` and `run` are driven by
the integration tests): JSON on stdout, exit codes, the flags."""

import json
from pathlib import Path

import numpy as np
import pytest

from plum.cli import main
from publisher.cli import rollback, status
from publisher.deltas import DeltaLog
from publisher.ledger import ROLLED_BACK, Ledger
from serving.artifact import ModelRepository
from tests.publisher_support import SID_VERSION, assignment, records

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "test.toml")
UNREACHABLE = "http://127.0.0.1:1"  # connection refused at once


@pytest.fixture
def state(tmp_path):
    """Two published versions (cheap artifacts) and a delta log of 3 assignments."""
    with DeltaLog(tmp_path / "publisher") as deltas:
        deltas.ingest("t", records([assignment(i) for i in range(3)], "t"))
        snapshot = deltas.snapshot(SID_VERSION)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.json").write_text("{}")
    repo = ModelRepository(tmp_path / "models")
    with Ledger(tmp_path / "publisher") as ledger:
        for step in (10, 20):
            m = repo.write(
                {"w": np.ones(2, np.float32)},
                vocab,
                snapshot,
                step=step,
                model_config={},
                max_prompt_len=8,
                newest_event_ts_ms=0,
                gate={"reason": "no_served_model"},
            )
            ledger.publish(step, m.version, "no_served_model")
    return tmp_path


def flags(tmp: Path) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--state-dir",
        str(tmp / "publisher"),
        "--model-repo",
        str(tmp / "models"),
    ]


def test_status_prints_the_ledger_deltas_and_repository(state, capsys):
    assert main(["publish", "status", *flags(state)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == 2 and [d["step"] for d in out["decisions"]] == [20, 10]
    assert out["deltas"] == {SID_VERSION: 3}
    assert [v["version"] for v in out["repository"]["versions"]] == [1, 2]
    assert out["repository"]["versions"][1]["step"] == 20
    assert out["repository"]["versions"][1]["gate"] == "no_served_model"
    assert out["endpoints"] == []


def test_rollback_sets_the_target_even_when_an_endpoint_is_down(state, capsys):
    code = rollback([*flags(state), "--endpoint", UNREACHABLE])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # the endpoint did not confirm it
    assert (out["target"], out["previous_target"], out["rolled_back"]) == (1, 2, [2])
    with Ledger(state / "publisher") as ledger:
        assert ledger.target() == 1 and ledger.decision(20).decision == ROLLED_BACK
    assert status([*flags(state)]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == 1


def test_rollback_to_a_version_that_does_not_exist_changes_nothing(state, capsys):
    assert rollback([*flags(state), "--endpoint", UNREACHABLE, "--to", "7"]) == 1
    assert "cannot roll back to version 7" in capsys.readouterr().err
    with Ledger(state / "publisher") as ledger:
        assert ledger.target() == 2
