"""`plum replay` arguments: bad ones exit 2 with one line; the backfill's `plum flink run`
command line. No broker: every case here is refused before Kafka is asked anything."""

from __future__ import annotations

import time

import pytest

from plum import cli
from plum.times import format_time_ms, parse_time_ms
from streams.replay.cli import END_OF_TIME_MS, _BadArguments, backfill_args
from streams.replay.copy import CopyRequest


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--topic", "plum.sft-examples.v1", "--from", "0", "--to", "5"], "has no replay topic"),
        (["--topic", "plum.watches.replay.v1", "--from", "0", "--to", "5"], "has no replay"),
        (["--topic", "plum.watches.v1", "--from", "10", "--to", "10"], "must be before --to"),
        (["--topic", "plum.watches.v1", "--from", "2024-01-02", "--to", "2024-01-01"], "before"),
        (["--topic", "plum.watches.v1", "--from", "yesterday", "--to", "5"], "--from: not epoch"),
        (["--topic", "plum.watches.v1", "--from", "0"], "required: --to"),
        (
            ["--topic", "plum.watches.v1", "--from", "0", "--to", "5", "--batch-records", "0"],
            ">= 1",
        ),
        (["--topic", "plum.watches.v1", "--from", "0", "--to", "5", "--max-rate", "-1"], "> 0"),
        (["--topic", "plum.watches.v1", "--from", "0", "--to", "5", "--sideways"], "unrecognized"),
    ],
)
def test_bad_copy_arguments_exit_2_with_one_line(argv, says, capsys):
    assert _exit_code(["replay", "copy", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert err.startswith("plum replay copy: ")


def _exit_code(argv: list[str]) -> int:
    """What `plum ARGV` exits with (argparse's errors exit from inside)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_an_empty_range_is_not_a_copy():
    with pytest.raises(ValueError, match="range is empty"):
        CopyRequest("a", "b", 5, 5)
    assert CopyRequest("w", "w.replay", 1, 2).copy_id == "plum-replay.w.1-2"


def test_times_are_epoch_ms_iso_or_now():
    assert parse_time_ms("1700000000000") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert abs(parse_time_ms("now") - time.time() * 1000) < 5000
    assert format_time_ms(1_700_000_000_000) == "2023-11-14T22:13:20Z"
    assert format_time_ms(1_700_000_000_005) == "2023-11-14T22:13:20.005Z"


def test_backfill_runs_plum_flink_run_into_suffixed_outputs():
    argv, suffix = backfill_args(
        ["--from", "10", "--to", "20", "--id", "x1", "--topic-prefix", "t.", "--parallelism", "2"]
    )
    assert suffix == ".backfill-x1"
    assert argv == [
        "--backfill",
        "--from",
        "10",
        "--to",
        "20",
        "--output-suffix",
        ".backfill-x1",
        "--topic-prefix",
        "t.",
        "--parallelism",
        "2",
    ]
    whole, suffix = backfill_args([])
    assert suffix == ".backfill-all" and whole[1:5] == ["--from", "0", "--to", str(END_OF_TIME_MS)]
    assert backfill_args(["--from", "10", "--to", "20"])[1] == ".backfill-10-20"


@pytest.mark.parametrize(
    "argv",
    [
        ["--output-suffix", ".live"],
        ["--fresh"],
        ["--from", "20", "--to", "10"],
        ["--id", "a/b"],
        ["--id", ""],
    ],
)
def test_backfill_refuses_what_it_sets_itself_and_bad_ids(argv, capsys):
    with pytest.raises(_BadArguments):
        backfill_args(argv)
    assert _exit_code(["replay", "backfill", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plum replay backfill: ") and len(err.splitlines()) == 1, err
