"""The settings root: derived values across real component configs, and a contradictory
config refused at start with one line naming both fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.config_checks import SECTIONS, check_stack
from deploy.local.demo import DemoConfig
from plum.config import REPO_ROOT, ConfigError, load_section
from plum.settings import Check, Settings
from streams.flink.config_checks import CHECKS as FLINK_CHECKS
from streams.flink.job import load_flink_config
from tokenizer.config_checks import CHECKS as SID_SERVICE_CHECKS
from tokenizer.service import SidServiceConfig
from trainer.config import load_vocab_config
from trainer.config_checks import CHECKS as TRAINER_CHECKS
from trainer.config_checks import check_trainer_settings
from trainer.data import load_data_config
from trainer.loop import load_trainer_config

CONFIGS = REPO_ROOT / "configs"
FILES = ["demo.toml", "test.toml", "paper.toml"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def refusal(path: Path, checks=None) -> str:
    """The one-line error a start with this config gets."""
    with pytest.raises(ConfigError) as err:
        if checks is None:
            check_stack(path, DemoConfig, env={})
        else:
            Settings.load(path, env={}).check(checks)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------- the repo's files


@pytest.mark.parametrize("name", FILES)
def test_every_repository_config_passes_every_check(name):
    settings = check_stack(CONFIGS / name, DemoConfig, env={})
    assert set(settings.section_names) <= set(SECTIONS) | {"demo"}


@pytest.mark.parametrize("name", FILES)
def test_no_repository_config_writes_a_derived_value(name):
    """The Kafka address, the disambiguation range and reward_max live in one place each."""
    data = Settings.load(CONFIGS / name, env={}).file.data
    copies = [
        f"[{section}].{key}"
        for section, table in data.items()
        for key in table
        if key == "bootstrap"
        or (key == "disambiguation_size" and section != "sid")
        or key == "reward_max"
    ]
    assert copies == []


def test_every_component_gets_the_kafka_address_of_the_kafka_section():
    path = CONFIGS / "test.toml"  # [kafka] port 19092, unlike any component default
    env: dict[str, str] = {}
    addresses = {
        load_flink_config(path, env=env).bootstrap,
        load_section(SidServiceConfig, path, "sid_service", env=env).bootstrap,
        load_trainer_config(path, env=env).bootstrap,
    }
    assert addresses == {"127.0.0.1:19092"}
    moved = {"PLUM_KAFKA__PORT": "29092"}
    assert load_trainer_config(path, env=moved).bootstrap == "127.0.0.1:29092"


@pytest.mark.parametrize(
    ("name", "size"), [("demo.toml", 256), ("test.toml", 256), ("paper.toml", 64)]
)
def test_sid_service_and_trainer_vocab_read_one_disambiguation_range(name, size):
    path = CONFIGS / name
    service = load_section(SidServiceConfig, path, "sid_service", env={})
    assert (
        service.disambiguation_size == load_vocab_config(path, env={}).disambiguation_size == size
    )
    env = {"PLUM_SID__DISAMBIGUATION_SIZE": "32"}  # moving [sid] moves both
    service = load_section(SidServiceConfig, path, "sid_service", env=env)
    assert service.disambiguation_size == load_vocab_config(path, env=env).disambiguation_size == 32


def test_reward_max_is_the_largest_reward_of_the_flink_weights(tmp_path):
    # r_max = w_click + w_ratio * ratio_cap + w_satisfaction = 2 + 3 * 1.5 + 0.25
    path = write(tmp_path, "[flink]\nw_click = 2.0\nw_ratio = 3.0\nratio_cap = 1.5\n"
                 "w_satisfaction = 0.25\n")  # fmt: skip
    assert load_data_config(path, env={}).reward_max == 6.75
    assert load_data_config(CONFIGS / "demo.toml", env={}).reward_max == 2.5  # 1 + 1 * 1 + 0.5


def test_a_reward_max_copy_that_contradicts_the_weights_is_refused(tmp_path):
    path = write(tmp_path, "[flink]\nw_click = 2.0\n[trainer_data]\nreward_max = 2.5\n")
    with pytest.raises(ConfigError) as err:
        load_data_config(path, env={})
    assert "[trainer_data].reward_max = 2.5 contradicts [flink] reward weights" in str(err.value)
    assert "= 3.5" in str(err.value)


def test_a_disambiguation_copy_that_contradicts_sid_is_refused(tmp_path):
    path = write(tmp_path, "[sid]\ndisambiguation_size = 256\n[trainer_vocab]\n"
                 "disambiguation_size = 16\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[trainer_vocab\]\.disambiguation_size = 16 "
                       r"contradicts \[sid\]\.disambiguation_size = 256"):  # fmt: skip
        load_vocab_config(path, env={})


# ---------------------------------------------------------------------------- contradictions

# Each: a config (on top of the defaults), and the two fields its one-line refusal names.
CONTRADICTIONS = [
    (
        "[trainer_data]\nseq_len = 64\nmax_prompt_len = 62\n",  # 62 + 4 SID tokens > 65
        "[trainer_data].max_prompt_len + SID tokens ([tokenizer].num_levels + 1)",
        "[trainer_data].seq_len + 1",
        "66 vs 65",
    ),
    (
        "[tokenizer]\nnum_levels = 4\ncodebook_base = 64\n[trainer_data]\nseq_len = 64\n"
        "max_prompt_len = 61\n",  # 61 + 5 > 65: the same prompt fits 3 levels, not 4
        "[tokenizer].num_levels",
        "[trainer_data].seq_len + 1",
        "66 vs 65",
    ),
    (
        "[trainer_model]\nmax_len = 100\n[trainer_data]\nseq_len = 128\n",
        "[trainer_data].seq_len",
        "[trainer_model].max_len",
        "128 vs 100",
    ),
    (
        "[trainer_model]\nmax_len = 100\n[trainer_data]\nseq_len = 64\nmax_prompt_len = 56\n"
        "[trainer_cpt]\nseq_len = 128\n",
        "[trainer_cpt].seq_len",
        "[trainer_model].max_len",
        "128 vs 100",
    ),
    (
        '[trainer]\ntopic_prefix = "a."\n[flink]\ntopic_prefix = "b."\n[simulator]\n'
        'topic_prefix = "b."\n[sid_service]\ntopic_prefix = "b."\n',
        "[trainer].topic_prefix",
        "[flink].topic_prefix",
        "'a.' vs 'b.'",
    ),
    (
        '[flink]\ntopic_prefix = "b."\n[trainer]\ntopic_prefix = "b."\n',
        "[flink].topic_prefix",
        "[simulator].topic_prefix",
        "'b.' vs ''",
    ),
    (
        '[sid_service]\ntopic_prefix = "b."\n',
        "[sid_service].topic_prefix",
        "[simulator].topic_prefix",
        "'b.' vs ''",
    ),
    (
        '[trainer]\nindex_path = "/tmp/a.sqlite"\n',
        "[trainer].index_path",
        "[sid_service].index_path",
        "'/tmp/a.sqlite' vs ''",
    ),
    (
        "[flink]\nmetrics_port = 9103\n[sid_service]\nmetrics_port = 9103\n",
        "[flink].metrics_port",
        "[sid_service].metrics_port",
        "9103 vs 9103",
    ),
    (
        "[flink]\njob_metrics_port = 9107\n[publisher]\nmetrics_port = 9107\n",
        "[flink].job_metrics_port",
        "[publisher].metrics_port",
        "9107 vs 9107",
    ),
    (
        "[flink]\nrest_port = 8400\n[serving]\nport = 8400\n",
        "[flink].rest_port",
        "[serving].port",
        "8400 vs 8400",
    ),
    (
        "[simulator]\nout_of_order_fraction = 0.01\nmax_delay_ms = 45000\n"
        "[flink]\nout_of_orderness_ms = 45000\n",  # a held-back watch may reach the bound
        "[simulator].max_delay_ms",
        "[flink].out_of_orderness_ms",
        "45000 vs 45000",
    ),
    (
        "[kafka]\nport = 9104\n",  # the demo's trainer metrics port
        "[kafka].port",
        "[demo].trainer_metrics_port",
        "9104 vs 9104",
    ),
]


@pytest.mark.parametrize(("text", "left", "right", "values"), CONTRADICTIONS)
def test_a_contradictory_config_is_refused_naming_both_fields(tmp_path, text, left, right, values):
    message = refusal(write(tmp_path, text))
    assert left in message and right in message and values in message, message


def test_a_simulator_without_held_back_watches_has_no_delay_bound(tmp_path):
    text = "[simulator]\nout_of_order_fraction = 0.0\nmax_delay_ms = 90000\n"
    assert Settings.load(write(tmp_path, text), env={}).problems(FLINK_CHECKS) == []


def test_ports_of_zero_clash_with_nothing(tmp_path):
    path = write(tmp_path, "[flink]\nmetrics_port = 0\n[sid_service]\nmetrics_port = 0\n")
    assert check_stack(path, DemoConfig, env={}).path == path


def test_each_component_checks_what_it_reads(tmp_path):
    path = write(tmp_path, '[flink]\ntopic_prefix = "b."\n')
    flink = refusal(path, FLINK_CHECKS)
    assert "[flink].topic_prefix == [simulator].topic_prefix" in flink
    trainer = refusal(path, TRAINER_CHECKS)
    assert "[trainer].topic_prefix == [flink].topic_prefix" in trainer
    assert Settings.load(path, env={}).problems(SID_SERVICE_CHECKS) == []  # not its input


def test_every_failing_check_is_counted_in_the_one_line(tmp_path):
    text = '[trainer]\ntopic_prefix = "a."\nindex_path = "/x"\n'
    assert refusal(write(tmp_path, text), TRAINER_CHECKS).endswith("(and 1 more)")


def test_environment_overrides_are_checked_too(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"\[trainer\]\.topic_prefix == \[flink\]"):
        check_trainer_settings(path, env={"PLUM_TRAINER__TOPIC_PREFIX": "x."})


def test_a_section_no_component_reads_is_refused(tmp_path):
    message = refusal(write(tmp_path, "[trainer_dat]\nbatch_size = 4\n"))
    assert "['trainer_dat']" in message and "read by no component" in message


def test_a_benchmark_section_is_left_to_the_benchmark(tmp_path):
    path = write(tmp_path, "[bench_trainer_quality]\nevents = 1200\n")
    assert check_stack(path, DemoConfig, env={}).section_names == ["bench_trainer_quality"]


def test_a_bad_value_in_a_late_component_is_refused_before_the_stack_starts(tmp_path):
    message = refusal(write(tmp_path, "[trainer_data]\nfresh_fraction = 2.0\n"))
    assert "[trainer_data]" in message and "fresh_fraction=2.0" in message


def test_the_trainer_command_refuses_a_contradictory_config(tmp_path):
    import argparse

    from trainer.arguments import trainer_config

    path = write(tmp_path, "[trainer_model]\nmax_len = 100\n[trainer_data]\nseq_len = 128\n")
    args = argparse.Namespace(config=str(path), bootstrap=None, topic_prefix=None, index=None)
    with pytest.raises(ConfigError, match=r"\[trainer_data\]\.seq_len <= \[trainer_model\]"):
        trainer_config(args)


def test_check_relations_are_the_ones_named():
    with pytest.raises(ValueError, match="relation '<<'"):
        Check("a", "<<", "b", lambda s: (1, 2))
    assert Check("[a].x", "<", "[b].y", lambda s: (2, 2)).failure(Settings.load(None, env={}))
    holds = Check("[a].x", "<=", "[b].y", lambda s: (1, 2))
    fails = Check("[a].x", ">=", "[b].y", lambda s: (1, 2), "why not")
    settings = Settings.load(CONFIGS / "test.toml", env={})
    assert holds.failure(settings) is None
    assert fails.failure(settings) == "[a].x >= [b].y does not hold: 1 vs 2 (why not)"
