"""`plum bench quality`: its settings, the training windows and the beam knee."""

import dataclasses
import time

import jax
import numpy as np
import pytest

from bench.quality import (
    BestEpoch,
    QualityConfig,
    gap_probes,
    initial_params,
    knee,
    load_quality_config,
    one_target_batches,
    paired_difference,
    result_name,
    standard_error,
    thinned,
    until,
    windows,
)
from bench.trainer_quality import MovieLensInputs, name_items
from plum.config import REPO_ROOT, ConfigError
from streams.contracts.schema import HistoryItem, SftExample, UploadEvent, WatchEvent
from tokenizer.ablation import CONCATENATED
from tokenizer.config import load_tokenizer_config
from trainer.config import TINY, VocabConfig
from trainer.cpt import build_corpus, vocab_for_corpus
from trainer.model import init_params
from trainer.prompt import SidLookup, Watch


def _user(n: int, name: str) -> list[Watch]:
    return [Watch(f"{name}{i}", 1000 * i, 1.0, 60.0) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_cover_every_watch_once_in_order_and_never_alone(seed):
    users = [_user(23, "a"), _user(7, "b"), _user(2, "c"), _user(1, "d")]
    got = windows(users, 5, np.random.default_rng(seed))
    assert all(2 <= len(w) <= 5 for w in got)
    covered = [w.video_id for win in got for w in win]
    assert len(covered) == len(set(covered))
    # a user's windows are consecutive slices of their watches, at most one lone item lost
    for user in users[:3]:
        mine = [w for win in got for w in win if w.video_id[0] == user[0].video_id[0]]
        assert [w.ts for w in mine] == sorted(w.ts for w in mine)
        assert len(user) - len(mine) <= 2
    assert not any(w.video_id == "d0" for win in got for w in win)


def test_windows_start_at_a_seeded_random_offset():
    users = [_user(40, "a")]
    starts = {windows(users, 10, np.random.default_rng(s))[0][-1].video_id for s in range(8)}
    assert len(starts) > 1


def test_thinning_drops_watches_at_the_given_rate_and_keeps_the_order():
    users = [_user(400, "a"), _user(3, "b")]
    got = thinned(users, 0.25, np.random.default_rng(0))
    kept = got[0]
    assert 0.2 < 1 - len(kept) / 400 < 0.3
    assert [w.ts for w in kept] == sorted(w.ts for w in kept)
    assert {w.video_id for w in kept} <= {w.video_id for w in users[0]}


def test_thinning_keeps_a_user_whole_rather_than_leave_fewer_than_two():
    users = [_user(2, "a")] * 50
    got = thinned(users, 0.5, np.random.default_rng(1))
    assert all(len(seq) == 2 for seq in got)


def test_no_thinning_returns_the_timelines_and_draws_nothing():
    users = [_user(30, "a")]
    rng, untouched = np.random.default_rng(3), np.random.default_rng(3)
    assert thinned(users, 0.0, rng) == users
    assert rng.random() == untouched.random()


def test_knee_is_the_first_beam_within_noise_of_the_widest():
    sweep = {"1": {"recall@10": 0.05}, "4": {"recall@10": 0.10}, "8": {"recall@10": 0.118}}
    sweep["16"] = {"recall@10": 0.121}
    assert knee(sweep, gain=0.005) == 8
    assert knee(sweep, gain=0.001) == 16


def test_quality_settings_come_from_their_section_env_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[quality]\nepochs = 3\nd_model = 64\n")
    cfg = load_quality_config(toml, env={"PLUM_QUALITY__BATCH_SIZE": "8"}, history_len=20)
    assert (cfg.epochs, cfg.d_model, cfg.batch_size, cfg.history_len) == (3, 64, 8, 20)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_quality_config(empty, env={}) == QualityConfig()
    toml.write_text("[quality]\nepoks = 1\n")
    with pytest.raises(ConfigError):
        load_quality_config(toml, env={})


def test_best_epoch_keeps_the_best_parameters_and_stops_after_patience_epochs_without_one():
    best = BestEpoch(patience=2)
    made: list[int] = []

    def snapshot(epoch: int):
        def make():
            made.append(epoch)
            return f"params{epoch}"

        return make

    assert not best.observe(1, 0.10, snapshot(1))
    assert not best.observe(2, 0.12, snapshot(2))
    assert not best.observe(3, 0.12, snapshot(3))  # equal is not better
    assert best.observe(4, 0.11, snapshot(4))
    assert (best.epoch, best.score, best.params) == (2, 0.12, "params2")
    assert made == [1, 2]  # parameters are copied only for a new best
    assert [p["epoch"] for p in best.curve] == [1, 2, 3, 4]


def test_best_epoch_with_patience_zero_never_stops_early():
    best = BestEpoch(patience=0)
    assert not any(best.observe(n, 1.0 / n, lambda: None) for n in range(1, 20))
    assert best.epoch == 1


def test_until_stops_yielding_once_the_deadline_has_passed():
    assert list(until(iter([1, 2, 3]), time.monotonic() + 60)) == [1, 2, 3]
    assert list(until(iter([1, 2, 3]), time.monotonic() - 1)) == []


def test_patience_must_not_be_negative():
    with pytest.raises(ValueError, match="patience"):
        QualityConfig(patience=-1)


def test_drop_newest_must_not_be_negative():
    with pytest.raises(ValueError, match="drop_newest"):
        QualityConfig(drop_newest=-1)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_item_dropout_is_a_probability_below_one(p):
    with pytest.raises(ValueError, match="item_dropout"):
        QualityConfig(item_dropout=p)


def test_sid_variant_is_one_of_the_tokenizer_ablation_variants():
    assert QualityConfig().sid_variant == "sidv2"  # the production tokenizer
    assert QualityConfig(sid_variant="sidv1").sid_variant == "sidv1"
    with pytest.raises(ValueError, match="sid_variant"):
        QualityConfig(sid_variant="sidv3")


def test_train_targets_is_every_one_or_examples_and_item_dropout_needs_every():
    with pytest.raises(ValueError, match="train_targets"):
        QualityConfig(train_targets="some")
    for targets in ("one", "examples"):
        with pytest.raises(ValueError, match="item_dropout"):
            QualityConfig(train_targets=targets, item_dropout=0.2)


@pytest.mark.parametrize("targets", ["one", "examples"])
def test_example_epochs_train_each_example_once_as_the_continuous_trainer_writes_it(targets):
    """train_targets = "one" / "examples": every row is what `plum trainer run` with
    prompt_layout = "sequence" trains, with train_positions = "target"
    (trainer.prompt.sft_sequence) / "every" (trainer.prompt.every_position_sequence), each
    example once per epoch, the order reshuffled per epoch."""
    from tests.trainer_data_support import example, lookup, tiny_vocab
    from trainer.prompt import collate, every_position_sequence, sft_sequence

    def written(e):
        if targets == "examples":
            return every_position_sequence(e, sids, vocab, 40)
        return sft_sequence(e, sids, vocab, 40, layout="sequence")

    vocab, sids = tiny_vocab(), lookup()
    examples = [example(i) for i in range(7)]
    cfg = QualityConfig(batch_size=3, train_targets=targets)
    rng = np.random.default_rng(0)
    first = list(one_target_batches(examples, sids, vocab, cfg, 40, 48, rng))
    assert len(first) == 3 and all(b.inputs.shape == (3, 48) for b in first)
    want = {
        (tuple(b.inputs[0]), tuple(b.weights[0]))
        for b in (collate([written(e)], 48, vocab.pad_id) for e in examples)
    }
    rows = [(tuple(r), tuple(w)) for b in first for r, w in zip(b.inputs, b.weights, strict=True)]
    rows = [r for r in rows if any(r[1])]
    assert len(rows) == 7 and set(rows) == want
    trained = {sum(w) for _, w in rows}  # SID tokens per row: the target's, or 3 SIDs
    assert trained == {vocab.num_sid_slots * (1 if targets == "one" else 3)}
    second = list(one_target_batches(examples, sids, vocab, cfg, 40, 48, rng))
    assert [tuple(r) for b in second for r in b.inputs] != [
        tuple(r) for b in first for r in b.inputs
    ]


def test_test_is_scored_per_epoch_only_on_a_diagnostic_split():
    with pytest.raises(ValueError, match="never score test per epoch"):
        QualityConfig(curve_on_scored=True)
    assert QualityConfig(curve_on_scored=True, drop_newest=1).curve_on_scored


def test_a_diagnostic_split_never_writes_the_results_file():
    assert result_name("ml-100k", "cpu") == "quality-ml100k"
    assert result_name("ml-100k", "gpu") == "quality-ml100k-gpu"
    assert result_name("ml-100k", "cpu", drop_newest=1) == "quality-ml100k-drop-newest-1"


def test_standard_error_of_a_recall_over_943_users():
    assert standard_error(0.1, 943) == pytest.approx(0.00977, abs=1e-5)
    assert standard_error(0.0, 943) == 0.0


def test_paired_difference_counts_the_users_only_one_ranker_hits():
    model = [True, True, False, False, True] * 20
    other = [True, False, True, False, False] * 20
    got = paired_difference(model, other)
    assert (got["only_model"], got["only_other"]) == (40, 20)
    assert got["difference"] == pytest.approx(0.2)
    # var of the per-user difference (+1 on 40, -1 on 20, 0 on 40 users) over n
    d = np.array([1] * 40 + [-1] * 20 + [0] * 40, float)
    assert got["standard_error"] == pytest.approx(np.sqrt(d.var() / len(d)))
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def _example(user: str, history: list[str], target: str) -> SftExample:
    items = tuple(HistoryItem(v, 1.0, 60.0, float(len(history) - i)) for i, v in enumerate(history))
    return SftExample(f"{user}-{target}", user, items, history[-1], target, 1.0, 0)


def test_gap_probes_ask_for_a_film_two_steps_past_a_prompt_of_training_films():
    validation = [_example("u1", ["a", "b", "c"], "v1"), _example("u2", ["d"], "v2")]
    test = [_example("u1", ["a", "b", "c", "v1"], "t1"), _example("u2", ["d", "v2"], "t2")]
    probes = gap_probes(validation, test)

    later = probes["test_from_validation_prompt"]
    assert [(e.user_id, e.target_video_id) for e in later] == [("u1", "t1"), ("u2", "t2")]
    assert [e.history for e in later] == [v.history for v in validation]

    shorter = probes["validation_from_shorter_prompt"]  # u2 has no film left to prompt with
    assert [(e.user_id, e.target_video_id) for e in shorter] == [("u1", "v1")]
    assert [h.video_id for h in shorter[0].history] == ["a", "b"]
    assert shorter[0].context_video_id == "b"


@pytest.mark.parametrize(
    ("concatenated", "inputs"), [(False, {"genre": 3, "text": 4}), (True, {CONCATENATED: 7})]
)
def test_name_items_trains_sid_v1_on_every_modality_as_one_embedding(concatenated, inputs):
    rng = np.random.default_rng(0)
    uploads = [
        UploadEvent(
            f"v{i}",
            i,
            "t",
            "",
            "ch",
            ("x",),
            60.0,
            {"text": tuple(rng.normal(size=4)), "genre": tuple(rng.normal(size=3))},
        )
        for i in range(40)
    ]
    cfg = dataclasses.replace(
        load_tokenizer_config(REPO_ROOT / "configs" / "test.toml", steps=5),
        codebook_base=8,
        log_every=5,
    )
    lookup, level_sizes, report = name_items(uploads, lambda _: True, [], cfg, 8, concatenated)
    assert report["inputs"] == inputs
    assert level_sizes == (8, 4, 2) and report["items"] == 40


@pytest.mark.parametrize(("steps", "rate"), [(-1, 1e-3), (10, 0.0)])
def test_cpt_steps_must_not_be_negative_nor_its_learning_rate_zero(steps, rate):
    with pytest.raises(ValueError, match="cpt_steps"):
        QualityConfig(cpt_steps=steps, cpt_learning_rate=rate)


def _cpt_inputs() -> tuple[MovieLensInputs, SidLookup]:
    """Six films, four users' training ratings as watches; no split is needed for CPT."""
    uploads = [
        UploadEvent(f"v{i}", 0, f"title {i % 3}", "", "ch", (f"genre{i % 2}",), 60.0, {})
        for i in range(6)
    ]
    watches = [
        WatchEvent(f"e{u}{k}", f"u{u}", f"v{(u + k) % 6}", k * 60_000, 48.0, 60.0, True, "ml")
        for u in range(4)
        for k in range(5)
    ]
    inputs = MovieLensInputs(
        split=None,
        scored=[],
        uploads=uploads,
        cpt_watches=watches,
        tokenizer_pairs=[],
        interactions=[],
    )
    return inputs, SidLookup("sv", {f"v{i}": (i % 4, i // 4, 0, 0) for i in range(6)})


def test_sft_starts_from_random_init_without_cpt_and_from_the_cpt_checkpoint_with_it():
    inputs, lookup = _cpt_inputs()
    vocab = vocab_for_corpus(
        inputs.uploads, VocabConfig(text_vocab_size=300, disambiguation_size=2), (4, 2, 1)
    )
    model_cfg = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=64).with_vocab(vocab.size)
    random_init = init_params(model_cfg, jax.random.PRNGKey(3))

    params, report = initial_params(QualityConfig(seed=3), inputs, lookup, vocab, model_cfg, 48)
    assert report is None
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, random_init)))

    cfg = QualityConfig(seed=3, cpt_steps=20, cpt_learning_rate=3e-3, batch_size=8)
    params, report = initial_params(cfg, inputs, lookup, vocab, model_cfg, 48)
    # the production CPT on the training watches and every film's metadata (both halves)
    expected = build_corpus(inputs.uploads, inputs.cpt_watches, lookup, vocab, 48).describe()
    assert report["corpus"] == expected
    assert expected["behaviour_sequences"] == 4 and expected["metadata_sequences"] == 12
    assert report["steps"] == 20 and report["final_loss"] < report["first_loss"]
    assert jax.tree.structure(params) == jax.tree.structure(random_init)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, params, random_init)))
