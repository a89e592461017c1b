from dataclasses import dataclass
from pathlib import Path

import pytest

from plum.config import (
    DEFAULT_KAFKA_HOST,
    DEFAULT_KAFKA_PORT,
    ConfigError,
    derived,
    kafka_bootstrap,
    load_section,
)
from streams.kafka.broker import KafkaConfig


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


@pytest.mark.parametrize(
    ("name", "host", "port", "controller_port"),
    [
        ("demo", "127.0.0.1", 9092, 9093),
        ("test", "127.0.0.1", 19092, 19093),
        ("paper", DEFAULT_KAFKA_HOST, DEFAULT_KAFKA_PORT, KafkaConfig().controller_port),
    ],
)
def test_repository_configs_load_their_kafka_section(repo_root, name, host, port, controller_port):
    path = repo_root / "configs" / f"{name}.toml"
    cfg = load_section(KafkaConfig, path, "kafka", env={})
    assert (cfg.host, cfg.port, cfg.controller_port) == (host, port, controller_port)
    assert cfg.bootstrap == kafka_bootstrap(path, env={}) == f"{host}:{port}"


# ---------------------------------------------------------------------------- derived values


@dataclass(frozen=True)
class Component:
    """A component config with the two kinds of derived field."""

    bootstrap: str = "nowhere:1"  # the Kafka address: always from [kafka]
    total: int = derived(3, "[parts].a + [parts].b", lambda f: f.section(Parts, "parts").sum)
    name: str = "c"


@dataclass(frozen=True)
class Parts:
    a: int = 1
    b: int = 2

    @property
    def sum(self) -> int:
        return self.a + self.b


def test_bootstrap_is_derived_from_the_kafka_section(tmp_path):
    path = write(tmp_path, '[kafka]\nhost = "10.0.0.5"\nport = 9000\n[component]\n')
    assert load_section(Component, path, "component", env={}).bootstrap == "10.0.0.5:9000"


def test_bootstrap_without_a_kafka_section_is_the_default_address(tmp_path):
    cfg = load_section(Component, write(tmp_path, ""), "component", env={})
    assert cfg.bootstrap == f"{DEFAULT_KAFKA_HOST}:{DEFAULT_KAFKA_PORT}" == "127.0.0.1:9092"


def test_kafka_environment_overrides_reach_every_bootstrap(tmp_path):
    path = write(tmp_path, "[kafka]\nport = 9000\n")
    env = {"PLUM_KAFKA__PORT": "19999", "PLUM_KAFKA__HOST": "broker"}
    assert load_section(Component, path, "component", env=env).bootstrap == "broker:19999"


def test_a_bootstrap_copy_that_contradicts_kafka_is_refused_naming_both(tmp_path):
    path = write(tmp_path, '[kafka]\nport = 9000\n[component]\nbootstrap = "127.0.0.1:9092"\n')
    with pytest.raises(ConfigError) as err:
        load_section(Component, path, "component", env={})
    message = str(err.value)
    assert "\n" not in message
    assert "[component].bootstrap = '127.0.0.1:9092'" in message
    assert "[kafka].host:port = '127.0.0.1:9000'" in message


def test_a_bootstrap_copy_that_agrees_with_kafka_is_accepted(tmp_path):
    path = write(tmp_path, '[kafka]\nport = 9000\n[component]\nbootstrap = "127.0.0.1:9000"\n')
    assert load_section(Component, path, "component", env={}).bootstrap == "127.0.0.1:9000"


def test_env_and_keyword_overrides_of_a_derived_field_win(tmp_path):
    path = write(tmp_path, '[kafka]\nport = 9000\n[component]\nbootstrap = "x:1"\n')
    env = {"PLUM_COMPONENT__BOOTSTRAP": "env:2"}
    assert load_section(Component, path, "component", env=env).bootstrap == "env:2"
    cfg = load_section(Component, path, "component", env=env, bootstrap="flag:3", total=9)
    assert (cfg.bootstrap, cfg.total) == ("flag:3", 9)


def test_declared_derived_field_is_computed_from_its_source_section(tmp_path):
    path = write(tmp_path, "[parts]\na = 10\nb = 5\n")
    assert load_section(Component, path, "component", env={}).total == 15
    env = {"PLUM_PARTS__B": "7"}  # the source's own override moves the derived value
    assert load_section(Component, path, "component", env=env).total == 17
    assert load_section(Component, write(tmp_path, ""), "component", env={}).total == 3


def test_declared_derived_copy_that_contradicts_is_refused(tmp_path):
    path = write(tmp_path, "[parts]\na = 10\n[component]\ntotal = 3\n")
    with pytest.raises(ConfigError, match=r"\[component\]\.total = 3 contradicts \[parts\]\.a"):
        load_section(Component, path, "component", env={})


def test_direct_construction_keeps_the_dataclass_default():
    assert Component() == Component("nowhere:1", 3, "c")
