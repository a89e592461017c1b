"""The gate with a real tiny model: finiteness first, then Recall@k of the candidate and
the served model on the same examples, deferral on too few, one compiled search reused."""

import dataclasses

import pytest

from publisher.gate import (
    DEFER,
    NO_SERVED_MODEL,
    NO_SERVED_MODEL_FEW_EXAMPLES,
    NON_FINITE_LOSS,
    NON_FINITE_PARAMS,
    PASS,
    RECALL_REGRESSED,
    RECALL_WITHIN_MARGIN,
    REJECT,
    SID_VERSION_UNKNOWN,
    TOO_FEW_EXAMPLES,
    GateModel,
    GateSettings,
    SearchCache,
    gate,
)
from tests.publisher_support import (
    MAX_PROMPT_LEN,
    examples,
    full_lookup,
    tiny_config,
    tiny_params,
    with_nan,
)
from tests.trainer_data_support import tiny_vocab
from trainer.prompt import SidLookup

SETTINGS = GateSettings(k=5, margin=0.02, beams=5, min_examples=4)


@pytest.fixture(scope="module")
def world():
    """Models A and B, a shared search cache, and examples whose targets are A's top-1
    (so A's Recall@5 is 1 and B, another random init, trails it)."""
    vocab = tiny_vocab()
    cfg = tiny_config(vocab)
    lookup = full_lookup()

    def model(name, params, lk=lookup):
        return GateModel(name, cfg, params, vocab, lk, MAX_PROMPT_LEN)

    a, b = model("A", tiny_params(cfg, 0)), model("B", tiny_params(cfg, 1))
    searches = SearchCache()
    exs = examples(16)
    top1 = searches.ranker(a, SETTINGS.beams).rank_many(exs, 1)
    exs = [dataclasses.replace(e, target_video_id=r[0]) for e, r in zip(exs, top1, strict=True)]
    return model, a, b, exs, searches


def test_non_finite_params_or_loss_are_rejected_before_any_ranking(world):
    model, a, _, exs, _ = world
    empty = SearchCache()
    nan = model("nan", with_nan(a.params))
    result = gate(nan, a, exs, SETTINGS, searches=empty)
    assert (result.outcome, result.reason) == (REJECT, NON_FINITE_PARAMS)
    assert not result.passed and result.metrics["non_finite_arrays"] == 1
    result = gate(a, None, exs, SETTINGS, loss=float("nan"), searches=empty)
    assert (result.outcome, result.reason) == (REJECT, NON_FINITE_LOSS)
    assert result.metrics["loss"] == "nan"
    assert empty._searches == {}  # nothing was compiled for them


def test_no_served_model_passes_on_finiteness_with_recall_recorded(world):
    _, a, _, exs, searches = world
    result = gate(a, None, exs, SETTINGS, loss=1.5, searches=searches)
    assert (result.outcome, result.reason) == (PASS, NO_SERVED_MODEL) and result.passed
    assert result.metrics["recall_candidate"] == 1.0
    assert result.metrics["examples"] == 16 and result.metrics["served"] is None
    assert result.metrics["loss"] == 1.5


def test_a_regression_beyond_the_margin_is_rejected(world):
    _, a, b, exs, searches = world
    result = gate(b, a, exs, SETTINGS, searches=searches)
    assert (result.outcome, result.reason) == (REJECT, RECALL_REGRESSED)
    assert result.metrics["recall_served"] == 1.0
    assert result.metrics["recall_candidate"] < 1.0 - SETTINGS.margin
    assert (result.metrics["candidate"], result.metrics["served"]) == ("B", "A")


def test_within_the_margin_passes(world):
    _, a, b, exs, searches = world
    same = gate(a, a, exs, SETTINGS, searches=searches)
    assert (same.outcome, same.reason) == (PASS, RECALL_WITHIN_MARGIN)
    assert same.metrics["recall_candidate"] == same.metrics["recall_served"] == 1.0
    lenient = dataclasses.replace(SETTINGS, margin=1.0)
    assert gate(b, a, exs, lenient, searches=searches).reason == RECALL_WITHIN_MARGIN
    better = gate(a, b, exs, SETTINGS, searches=searches)  # A improves on B
    assert better.passed and better.metrics["recall_candidate"] > better.metrics["recall_served"]
    # every ranking above ran on the one compiled search
    (search,) = searches._searches.values()
    assert search._fn._cache_size() == 1


def test_too_few_examples_defer_unless_nothing_is_served(world):
    _, a, b, exs, searches = world
    few = exs[:3]
    result = gate(b, a, few, SETTINGS, searches=searches)
    assert (result.outcome, result.reason) == (DEFER, TOO_FEW_EXAMPLES)
    assert result.metrics["examples"] == 3 and "recall_candidate" not in result.metrics
    result = gate(b, None, few, SETTINGS, searches=searches)
    assert (result.outcome, result.reason) == (PASS, NO_SERVED_MODEL_FEW_EXAMPLES)
    result = gate(b, None, [], SETTINGS, searches=searches)
    assert result.passed and "recall_candidate" not in result.metrics


def test_only_targets_both_models_can_name_are_scored(world):
    model, a, b, exs, searches = world
    known = {v: s for v, s in a.lookup.sids.items() if v != exs[0].target_video_id}
    served = model("A-older-index", a.params, SidLookup("v1", known))
    result = gate(b, served, exs, SETTINGS, searches=searches)
    dropped = sum(e.target_video_id == exs[0].target_video_id for e in exs)
    assert result.metrics["examples"] == 16 - dropped
    assert result.metrics["skipped_no_sid"] == dropped


def test_a_sid_version_without_videos_is_rejected(world):
    model, a, _, exs, searches = world
    orphan = model("orphan", a.params, SidLookup("v9", {}))
    result = gate(orphan, a, exs, SETTINGS, searches=searches)
    assert (result.outcome, result.reason) == (REJECT, SID_VERSION_UNKNOWN)


def test_each_model_is_ranked_in_the_prompt_layout_it_was_trained_in(world):
    """A candidate trained in the "sequence" layout is asked sequence prompts, the served
    model beside it its own layout, from one shared compiled search."""
    model, a, _, exs, searches = world
    in_sequence = dataclasses.replace(a, prompt_layout="sequence")
    assert searches.ranker(a, SETTINGS.beams).layout == "target"
    ranker = searches.ranker(in_sequence, SETTINGS.beams)
    assert ranker.layout == "sequence" and ranker.search is searches.ranker(a, 5).search
    # the prompts differ, so (with A's top-1 targets, asked in A's layout) the rankings do
    assert ranker.rank_many(exs, 1) != searches.ranker(a, SETTINGS.beams).rank_many(exs, 1)
