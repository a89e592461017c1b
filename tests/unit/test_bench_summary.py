"""bench/README.md is generated from bench/results and kept current."""

from bench.common import RESULTS_DIR
from bench.summary import RESULT_COMMANDS, SUMMARY_PATH, command_help, flatten, render


def test_the_committed_page_matches_the_results():
    assert SUMMARY_PATH.read_text() == render(), (
        "bench/README.md is stale: run `plum bench summary`"
    )


def test_every_result_has_a_command_that_exists():
    names = {p.stem for p in RESULTS_DIR.glob("*.json")}
    assert names <= set(RESULT_COMMANDS)
    for command in RESULT_COMMANDS.values():
        assert command_help(command)  # raises KeyError for a command plum does not have


def test_flatten_keeps_scalars_to_the_depth_and_skips_lists_and_run_details():
    doc = {"a": 1, "b": {"c": 2.5, "d": [1, 2], "e": {"f": "x", "g": {"h": 0}}}, "runs": {"r": 1}}
    assert flatten(doc, depth=2) == [("a", 1), ("b.c", 2.5), ("b.e.f", "x")]
    assert flatten(doc, depth=3) == [("a", 1), ("b.c", 2.5), ("b.e.f", "x"), ("b.e.g.h", 0)]
