"""`plum up --data movielens`: the replay player takes the simulator's place everywhere
(children, their commands, Prometheus' targets), the tokenizer trains on the films, and a
state directory never mixes two data sources."""

from __future__ import annotations

import pytest

from deploy.local import demo
from deploy.local.demo import DataSourceError, DemoConfig, claim_data_source, component_command
from deploy.prometheus.targets import stack_targets
from plum.config import REPO_ROOT

DEMO_TOML = REPO_ROOT / "configs" / "demo.toml"


def test_the_replay_player_runs_in_the_simulators_place_under_movielens():
    components = ("prometheus", "simulator", "flink", "sid_service", "serving")
    assert DemoConfig(components=components).running == components
    assert DemoConfig(components=components, data="movielens").running == (
        "prometheus",
        "replay",
        "flink",
        "sid_service",
        "serving",
    )
    # naming both, or the player under simulated traffic, still runs one traffic source
    both = ("simulator", "replay", "flink")
    assert DemoConfig(components=both).running == ("simulator", "flink")
    assert DemoConfig(components=both, data="movielens").running == ("replay", "flink")


def test_an_unknown_data_source_or_a_negative_speed_is_refused():
    with pytest.raises(ValueError, match="data="):
        DemoConfig(data="netflix")
    with pytest.raises(ValueError, match="replay_speed"):
        DemoConfig(replay_speed=-1.0)


def test_the_player_and_the_tokenizer_are_driven_by_the_data_set():
    config = DemoConfig(data="movielens", movielens_dir="/data/ml", rate=300.0)
    play = component_command("replay", config, "127.0.0.1:1", None)
    assert play[play.index("replay") : play.index("replay") + 2] == ["replay", "play"]
    assert play[play.index("--speed") + 1] == str(config.replay_speed)
    assert play[play.index("--max-rate") + 1] == "300.0"
    assert play[play.index("--id") + 1] == demo.REPLAY_PLAY_ID
    tokenizer = component_command("tokenizer", config, "127.0.0.1:1", None)
    assert tokenizer[tokenizer.index("--data") + 1] == "movielens:/data/ml"
    simulated = component_command("tokenizer", DemoConfig(), "127.0.0.1:1", None)
    assert simulated[simulated.index("--data") + 1].startswith("simulator:")
    assert DemoConfig(movielens_dir="build/x").movielens_path() == REPO_ROOT / "build" / "x"


def test_prometheus_scrapes_the_player_instead_of_the_simulator():
    simulated = {t.job for t in stack_targets(DEMO_TOML, DemoConfig, env={})}
    replayed = {
        t.job: t.port
        for t in stack_targets(DEMO_TOML, DemoConfig, env={"PLUM_DEMO__DATA": "movielens"})
    }
    assert "simulator" in simulated and "replay" not in simulated
    assert "simulator" not in replayed and replayed["replay"] == DemoConfig().replay_metrics_port


def test_a_state_directory_keeps_the_data_source_it_was_first_run_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUM_STATE_DIR", str(tmp_path))
    claim_data_source("movielens")
    claim_data_source("movielens")  # the same again: fine
    assert (tmp_path / "demo" / "data-source").read_text().strip() == "movielens"
    with pytest.raises(DataSourceError, match="'movielens' data.*PLUM_STATE_DIR"):
        claim_data_source("simulator")


def test_a_state_directory_from_before_the_marker_holds_a_simulator_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUM_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(demo, "has_checkpoint", lambda path: path == demo.tokenizer_dir())
    with pytest.raises(DataSourceError, match="'simulator' data"):
        claim_data_source("movielens")
    claim_data_source("simulator")
    assert (tmp_path / "demo" / "data-source").read_text().strip() == "simulator"


def test_sample_requests_name_ids_of_the_data_set():
    assert "v0000001" in demo.sample_request(str(DEMO_TOML))
    assert '"ml100k-m50"' in demo.sample_request(str(DEMO_TOML), "movielens")
