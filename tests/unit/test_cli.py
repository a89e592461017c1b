"""The one command table of `plum`: every command resolves, and lookup picks the right one."""

from __future__ import annotations

import importlib

import pytest

from plum import cli


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_command_names_a_function_that_exists(command):
    module, _, function = command.target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_command_names_are_unique_and_none_is_a_group_of_another():
    names = [c.words for c in cli.COMMANDS]
    assert len(names) == len(set(names))
    for a in names:
        for b in names:
            assert a == b or b[: len(a)] != a, f"{a} is both a command and a group of {b}"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["kafka", "status", "--config", "x"], "kafka status"),
        (["simulate", "--events", "3"], "simulate"),
        (["data", "import", "movielens", "dir"], "data import movielens"),
        (["flink", "run", "--backfill"], "flink run"),
        (["tokenizer", "serve", "--help"], "tokenizer serve"),
        (["trainer", "eval"], "trainer eval"),
        (["bench", "sid-service"], "bench sid-service"),
        (["demo", "--seconds", "5"], "demo"),
    ],
)
def test_lookup_takes_the_command_words_and_leaves_the_arguments(argv, name):
    assert cli.find(argv).name == name


def test_group_help_lists_its_commands_and_unknown_ones_are_refused(capsys):
    assert cli.main(["kafka", "--help"]) == 0
    out = capsys.readouterr().out
    assert "kafka up" in out and "kafka exporter" in out and "simulate" not in out
    assert cli.main(["kafka", "sideways"]) == 2
    assert "unknown command 'sideways'" in capsys.readouterr().err
    assert cli.main(["nope"]) == 2
    assert cli.main([]) == 0
    assert "tokenizer serve" in capsys.readouterr().out
