"""[publisher]: the repo configs load, derived fields come from their owners, paths and
endpoints resolve, contradictions and bad values are refused with a clear message."""

from pathlib import Path

import pytest

from plum.config import ConfigError
from publisher.config import PublisherConfig, load_publisher_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.toml", "test.toml"])
def test_repo_configs_load_with_every_key(name):
    env = {"PLUM_STATE_DIR": "/srv/plum"}
    cfg = load_publisher_config(REPO / "configs" / name, env, endpoints=["http://h:1"])
    assert cfg.run_dir == "/srv/plum/trainer/run"
    assert cfg.model_repo == "/srv/plum/serving/models"
    assert cfg.state_dir == "/srv/plum/publisher"
    assert cfg.endpoints == ("http://h:1",)
    assert cfg.gate_beams >= cfg.gate_k and cfg.dtype == "float32"


def test_demo_endpoint_is_the_serving_host_and_port():
    cfg = load_publisher_config(REPO / "configs" / "demo.toml", {})
    assert cfg.endpoints == ("http://127.0.0.1:8400",)
    assert cfg.bootstrap == "127.0.0.1:9092"


def test_endpoint_defaults_are_servings_own(tmp_path):
    cfg = load_publisher_config(write(tmp_path, "[publisher]\n"), {"PLUM_SERVING__PORT": "9000"})
    assert cfg.endpoints == ("http://127.0.0.1:9000",)


def test_serving_port_zero_without_endpoints_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"\[serving\].port is 0.*--endpoint"):
        load_publisher_config(REPO / "configs" / "test.toml", {})


def test_admin_token_comes_from_serving_and_its_environment_variable(tmp_path):
    path = write(
        tmp_path, '[serving]\nhost = "h"\nport = 8400\nadmin_token = "file-token"\n[publisher]\n'
    )
    assert load_publisher_config(path, {}).admin_token == "file-token"
    env = {"PLUM_SERVING__ADMIN_TOKEN": "env-token"}
    cfg = load_publisher_config(path, env)
    assert cfg.admin_token == "env-token"
    assert "env-token" not in repr(cfg) and "admin_token='***'" in repr(cfg)


def test_a_contradicting_copy_of_a_derived_field_is_refused(tmp_path):
    path = write(
        tmp_path,
        '[serving]\nhost = "h"\nport = 1\nadmin_token = "a"\n[publisher]\nadmin_token = "b"\n',
    )
    with pytest.raises(ConfigError, match=r"admin_token.*contradicts \[serving\].admin_token"):
        load_publisher_config(path, {})
    path = write(
        tmp_path,
        '[kafka]\nport = 1\n[serving]\nhost = "h"\nport = 1\n[publisher]\nbootstrap = "x:2"\n',
    )
    with pytest.raises(ConfigError, match="bootstrap"):
        load_publisher_config(path, {})


def test_model_repo_follows_serving_and_flags_win(tmp_path):
    path = write(tmp_path, '[serving]\nhost = "h"\nport = 1\nmodel_repo = "/models"\n[publisher]\n')
    assert load_publisher_config(path, {}).model_repo == "/models"
    cfg = load_publisher_config(
        path, {}, model_repo="/other", endpoints=["http://a:1/", "http://b:2"], metrics_port=-1
    )
    assert cfg.model_repo == "/other"
    assert cfg.endpoints == ("http://a:1", "http://b:2")  # a trailing slash is dropped
    assert cfg.metrics_port == -1


def test_status_needs_no_endpoint():
    cfg = load_publisher_config(REPO / "configs" / "test.toml", {}, resolve_endpoints=False)
    assert cfg.endpoints == ()


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        load_publisher_config(write(tmp_path, "[publisher]\ngate_kk = 3\n"), {})
    with pytest.raises(ConfigError, match="gate_beams=5 < gate_k=10"):
        load_publisher_config(write(tmp_path, "[publisher]\ngate_beams = 5\n"), {})
    with pytest.raises(ValueError, match="dtype"):
        PublisherConfig(dtype="float16")
    with pytest.raises(ValueError, match="base URL"):
        PublisherConfig(endpoints=("serving:8400",))
    with pytest.raises(ValueError, match="gate_min_examples"):
        PublisherConfig(gate_examples=8, gate_min_examples=9)
