"""[serving]: the repo configs load as they are, bad values are refused at start-up."""

from pathlib import Path

import pytest

from plum.config import ConfigError
from serving.config import ServingConfig, load_serving_config, model_repo_path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.toml", "test.toml"])
def test_repo_configs_load(name):
    cfg = load_serving_config(REPO / "configs" / name, env={})
    assert cfg.beam_widths and cfg.batch_sizes
    assert cfg.admin_token == ""  # never committed: it comes from the environment


def test_env_and_flags_override_the_file():
    cfg = load_serving_config(
        REPO / "configs" / "test.toml",
        env={"PLUM_SERVING__ADMIN_TOKEN": "s3cret", "PLUM_SERVING__BEAM_WIDTHS": "5,20"},
        port=1234,
        host=None,  # an unset flag changes nothing
    )
    assert (cfg.admin_token, cfg.beam_widths, cfg.port, cfg.host) == (
        "s3cret",
        (5, 20),
        1234,
        "127.0.0.1",
    )
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize(
    "bad",
    [
        {"beam_widths": ()},
        {"beam_widths": (20, 10)},
        {"beam_widths": (10, 200)},
        {"batch_sizes": (0, 4)},
        {"batch_sizes": (4, 4)},
        {"port": 70000},
        {"max_wait_ms": -1.0},
        {"max_body_bytes": 10},
        {"max_history": 0},
        {"metrics_port": -2},
        {"log_every_s": 0.0},
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        ServingConfig(**bad)


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[serving]\nbeam_width = [10]\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_serving_config(path, env={})


def test_beam_rounds_up_to_a_compiled_width_and_batches_to_a_compiled_size():
    cfg = ServingConfig(beam_widths=(10, 20, 50), batch_sizes=(1, 4, 16))
    assert [cfg.width_for(b) for b in (1, 10, 11, 50, 51)] == [10, 10, 20, 50, None]
    assert [cfg.batch_size_for(n) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    with pytest.raises(ValueError):
        cfg.batch_size_for(17)


def test_model_repo_defaults_to_the_state_dir(tmp_path):
    env = {"PLUM_STATE_DIR": str(tmp_path)}
    assert model_repo_path(ServingConfig(), env) == tmp_path.resolve() / "serving" / "models"
    assert model_repo_path(ServingConfig(model_repo="/x/y"), env) == Path("/x/y")
