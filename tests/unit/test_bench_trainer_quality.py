"""`plum bench trainer-quality` at a toy size: result layout, fair evaluation, SID assignment."""

import json

import numpy as np
import pytest

import bench.trainer_quality as tq
from trainer.eval import SidGenerator

TOY = tq.QualityConfig(
    events=1200,
    num_users=60,
    num_topics=4,
    initial_videos=60,
    new_uploads_per_sim_minute=10.0,
    history_len=2,
    max_prompt_len=24,
    codebook_base=16,
    tokenizer_steps=20,
    disambiguation_size=16,
    text_vocab_size=300,
    batch_size=16,
    cpt_steps=4,
    sft_passes=1,
    beams=5,
    eval_max=24,
    hallucination_max=8,
    eval_batch=8,
    log_every_s=60.0,
)


class _Spy:
    """Records the example ids a ranker is asked about, then delegates."""

    def __init__(self, name, inner, seen):
        self.name, self.inner, self.seen = name, inner, seen

    def rank_many(self, examples, k):
        self.seen[self.name] = [e.event_id for e in examples]
        return self.inner.rank_many(examples, k)


class _GeneratorSpy(_Spy):
    def generate(self, examples):
        self.seen[self.name] = [e.event_id for e in examples]
        return self.inner.generate(examples)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    seen: dict[str, list[str]] = {}
    real = tq.evaluate

    def spying_evaluate(rankers, examples, *args, **kwargs):
        wrapped = {
            name: (_GeneratorSpy if isinstance(r, SidGenerator) else _Spy)(name, r, seen)
            for name, r in rankers.items()
        }
        return real(wrapped, examples, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(tq, "evaluate", spying_evaluate)
    try:
        out = tmp_path_factory.mktemp("tq")
        doc, path = tq.run(TOY, out_dir=out)
    finally:
        mp.undo()
    return doc, path, seen


def test_result_file_has_the_bench_layout_and_every_ranker(toy_run):
    doc, path, _ = toy_run
    written = json.loads(path.read_text())
    assert written["name"] == "trainer-quality"
    assert {"machine", "config", "metrics", "baseline", "ratio"} <= set(written)
    sim_metrics = written["metrics"]["simulator"]
    sim_baseline = written["baseline"]["simulator"]
    for entry in [sim_metrics[m] for m in tq.MODELS] + [sim_baseline[b] for b in tq.BASELINES]:
        for key in ("recall@1", "recall@5", "recall@10", "ndcg@10"):
            assert 0.0 <= entry[key] <= 1.0, entry
        assert entry["recall@1"] <= entry["recall@5"] <= entry["recall@10"]
    assert 0.0 <= sim_metrics["hallucination_rate"] <= 1.0
    assert 0.0 <= sim_metrics["reference"]["oracle_ground_truth"]["recall@10"] <= 1.0
    ratio = written["ratio"]["simulator"]
    assert ratio["best_baseline"] in tq.BASELINES
    assert "sft_from_cpt_recall@10_vs_best_baseline" in ratio
    timings = sim_metrics["detail"]["timings"]
    assert {"cpt_s", "sft_from_cpt_s", "sft_from_random_s", "eval_s"} <= set(timings)
    assert written["config"]["cpt_steps"] == TOY.cpt_steps


def test_every_ranker_is_scored_on_the_same_examples(toy_run):
    doc, _, seen = toy_run
    assert set(seen) == {*tq.MODELS, *tq.BASELINES, "oracle_ground_truth"}
    first = seen["popularity"]
    assert first, "no example was scored"
    assert all(ids == first for ids in seen.values())
    assert doc["metrics"]["simulator"]["num_examples"] == len(first)


def test_model_trains_only_on_examples_older_than_the_scored_ones(toy_run):
    doc, _, _ = toy_run
    detail = doc["metrics"]["simulator"]["detail"]
    split, data = detail["split"], detail["data"]
    assert split["train"] + split["scored"] == split["examples"]
    assert data["cpt_watches"] < data["watches"]  # CPT never sees the scored window


def test_disambiguation_code_is_order_of_arrival_within_the_prefix():
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [1, 2]])
    sids, overflow = tq.assign_sids(["a", "b", "c", "d", "e"], codes, disambiguation_size=3)
    assert sids == {"a": (1, 2, 0), "b": (1, 2, 1), "c": (3, 4, 0), "d": (1, 2, 2)}
    assert overflow == 1  # "e" would need code 3 of 3


def test_bad_eval_target_is_rejected():
    with pytest.raises(ValueError, match="eval_on"):
        tq.QualityConfig(eval_on="test")
