"""`plum trainer eval`: a checkpoint's Recall@K / NDCG@10 against the baselines.

    plum trainer eval --checkpoint state/trainer/run [--holdout 0.1] [--out report.json]

Examples are every SFT example on `plum.sft-examples.v1` (read up to its end now), split
by event time: the newest `--holdout` fraction is the fresh slice the model and the
baselines are scored on, the rest is what the baselines are fitted on. SIDs come from the
SID index's active version. The hallucination rate is measured with an unconstrained
search on the same prompts. Note: a continuously trained checkpoint has usually already
trained on part of the fresh slice; for an untouched slice, evaluate a checkpoint saved
before those examples arrived (its meta has the newest event time it trained on).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from trainer.arguments import common_arguments, state_paths, trainer_config

log = logging.getLogger(__name__)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum trainer eval", description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="CPT or run directory")
    parser.add_argument("--holdout", type=float, default=0.1, help="newest share held out")
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--max-examples", type=int, default=2000, help="cap on the fresh slice")
    parser.add_argument("--out", help="also write the report JSON here")
    args = parser.parse_args(argv)

    from streams.contracts import schema
    from streams.contracts.topics import TopicNames
    from streams.kafka.clients import read_all
    from trainer.cpt import load_model
    from trainer.data import index_lookup_source, load_data_config
    from trainer.eval import ModelRanker, candidate_ids, evaluate, fit_baselines, fresh_split
    from trainer.prompt import saved_prompt_layout

    cfg = trainer_config(args)
    index_path, _, _ = state_paths(cfg)
    data_cfg = load_data_config(args.config)
    model = load_model(args.checkpoint)
    lookup = index_lookup_source(index_path)()
    topic = TopicNames.with_prefix(cfg.topic_prefix).sft_examples
    examples = []
    for rec in read_all(cfg.bootstrap, topic, timeout_s=300):
        try:
            examples.append(schema.decode_sft_example(rec.value))
        except schema.ValidationError:
            continue
    if not examples:
        parser.error(f"no SFT examples on {topic}")
    train, fresh = fresh_split(examples, args.holdout)
    fresh = fresh[-args.max_examples :]
    cands = candidate_ids(lookup, model.vocab)
    # prompts in the layout the checkpoint was trained in (a CPT checkpoint has none)
    layout = saved_prompt_layout(model.meta, default=data_cfg.prompt_layout)
    rankers = {
        **fit_baselines(train, cands),
        "model": ModelRanker(
            model.model_config,
            model.params,
            model.vocab,
            lookup,
            beams=args.beams,
            max_prompt_len=data_cfg.max_prompt_len,
            layout=layout,
        ),
        "model_unconstrained": ModelRanker(
            model.model_config,
            model.params,
            model.vocab,
            lookup,
            beams=args.beams,
            max_prompt_len=data_cfg.max_prompt_len,
            layout=layout,
            constrained=False,
        ),
    }
    report = evaluate(rankers, fresh, candidates=cands)
    report.update(
        checkpoint=str(args.checkpoint),
        checkpoint_step=model.step,
        checkpoint_kind=model.meta.get("kind"),
        sid_version=lookup.version,
        trained_newest_event_ts=model.meta.get("counters", {}).get("newest_event_ts"),
        fresh_from_ts=min(e.ts for e in fresh) if fresh else None,
        train_examples=len(train),
    )
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0
