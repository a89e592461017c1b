"""`plum bench trainer-path`: its check that the Flink job's examples are the bench's
training rows, before it compares the two arms."""

from __future__ import annotations

import dataclasses

import pytest

from bench.quality import QualityConfig, SeedModel
from bench.trainer_path import RowCheck, compare_rows
from streams.contracts.schema import HistoryItem
from tests.trainer_data_support import LEVELS, example, lookup, tiny_vocab
from trainer.config import TINY


def _seed_model(targets: str = "examples") -> SeedModel:
    vocab = tiny_vocab()
    return SeedModel(
        QualityConfig(train_targets=targets),
        lookup(),
        LEVELS,
        {},
        vocab,
        TINY.with_vocab(vocab.size),
        max_prompt_len=40,
        seq_len=48,
        candidates=set(),
    )


def test_the_same_examples_are_the_same_rows_and_the_jobs_extra_ones_are_counted():
    bench = [example(i) for i in range(5)]
    first_rating = dataclasses.replace(example(9), event_id="first", history=())
    check = compare_rows([*reversed(bench), first_rating], bench, _seed_model())
    assert check == RowCheck(identical=5, different=0, flink_only=1, bench_only=0)
    assert check.same_rows


@pytest.mark.parametrize("targets", ["examples", "one"])
def test_a_history_in_another_order_is_a_different_row(targets):
    bench = [example(i) for i in range(3)]
    swapped = dataclasses.replace(bench[1], history=bench[1].history[::-1])
    check = compare_rows([bench[0], swapped, bench[2]], bench, _seed_model(targets))
    assert check == RowCheck(identical=2, different=1, flink_only=0, bench_only=0)
    assert not check.same_rows


@pytest.mark.parametrize("targets", ["examples", "one"])
def test_a_feature_the_row_writes_differs_too(targets):
    bench = [example(0)]
    h = bench[0].history
    slower = dataclasses.replace(
        bench[0], history=(*h[:-1], HistoryItem(h[-1].video_id, 0.1, 6.0, h[-1].hours_since))
    )
    assert compare_rows([slower], bench, _seed_model(targets)).different == 1


def test_an_example_the_job_did_not_write_fails_the_check():
    bench = [example(i) for i in range(3)]
    check = compare_rows(bench[:2], bench, _seed_model())
    assert check == RowCheck(identical=2, different=0, flink_only=0, bench_only=1)
    assert not check.same_rows


def test_only_the_rows_the_trainer_can_write_are_compared():
    from bench.trainer_path import TRAIN_POSITIONS, run

    assert TRAIN_POSITIONS == {"examples": "every", "one": "target"}
    with pytest.raises(ValueError, match="train_targets='every'"):
        run(QualityConfig(train_targets="every"), directory=None)  # refused before any work
