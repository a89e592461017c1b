from dataclasses import dataclass
from pathlib import Path

import pytest

from plum.config import ConfigError, load_section


@dataclass(frozen=True)
class DemoConfig:
    port: int = 1
    rate: float = 2.0
    name: str = "x"
    enabled: bool = False
    dims: tuple[int, ...] = (1, 2)
    where: Path | None = None


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_toml_values_replace_defaults(tmp_path):
    path = write(tmp_path, '[demo]\nport = 7\nrate = 3\ndims = [4, 5]\nwhere = "/tmp/x"\n')
    cfg = load_section(DemoConfig, path, "demo", env={})
    assert cfg == DemoConfig(port=7, rate=3.0, dims=(4, 5), where=Path("/tmp/x"))


def test_environment_overrides_toml_and_is_typed(tmp_path):
    path = write(tmp_path, "[demo]\nport = 7\n")
    env = {"PLUM_DEMO__PORT": "9", "PLUM_DEMO__ENABLED": "yes", "PLUM_DEMO__DIMS": "3,4"}
    cfg = load_section(DemoConfig, path, "demo", env=env)
    assert (cfg.port, cfg.enabled, cfg.dims) == (9, True, (3, 4))


def test_keyword_overrides_win_over_environment(tmp_path):
    path = write(tmp_path, "[demo]\n")
    cfg = load_section(DemoConfig, path, "demo", env={"PLUM_DEMO__PORT": "9"}, port=11)
    assert cfg.port == 11


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "[demo]\nprot = 7\n")
    with pytest.raises(ConfigError, match="unknown keys \\['prot'\\]"):
        load_section(DemoConfig, path, "demo", env={})


def test_bad_environment_value_names_the_variable(tmp_path):
    path = write(tmp_path, "[demo]\n")
    with pytest.raises(ConfigError, match="PLUM_DEMO__PORT='seven'"):
        load_section(DemoConfig, path, "demo", env={"PLUM_DEMO__PORT": "seven"})


def test_wrong_toml_type_is_an_error(tmp_path):
    path = write(tmp_path, '[demo]\nport = "seven"\n')
    with pytest.raises(ConfigError, match="\\[demo\\].port: expected an integer"):
        load_section(DemoConfig, path, "demo", env={})


def test_missing_section_gives_defaults(tmp_path):
    assert load_section(DemoConfig, write(tmp_path, ""), "demo", env={}) == DemoConfig()


def test_repository_configs_load(repo_root):
    from streams.kafka.broker import KafkaConfig

    for name in ("demo", "test"):
        load_section(KafkaConfig, repo_root / "configs" / f"{name}.toml", "kafka", env={})
