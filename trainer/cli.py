"""`plum trainer cpt` and `plum trainer run` (`plum trainer eval` is trainer.eval_cli)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from trainer.arguments import common_arguments, state_paths, trainer_config

log = logging.getLogger(__name__)


def cpt(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum trainer cpt", description="continued pre-training")
    common_arguments(parser)
    parser.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (SID levels)")
    parser.add_argument("--out", dest="cpt", help="CPT checkpoint directory")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--base-checkpoint", help="Llama-style safetensors dir to warm-start")
    args = parser.parse_args(argv)
    from streams.contracts.topics import TopicNames
    from tokenizer.checkpoint import load_tokenizer
    from trainer.config import load_model_config, load_vocab_config
    from trainer.cpt import build_corpus, load_cpt_config, read_events, train_cpt, vocab_for_corpus
    from trainer.data import index_lookup_source

    cfg = trainer_config(args, cpt_dir=args.cpt)
    index_path, cpt_dir, _ = state_paths(cfg)
    cpt_cfg = load_cpt_config(args.config, steps=args.steps)
    model_cfg = load_model_config(args.config)
    tok = load_tokenizer(args.tokenizer)
    lookup = index_lookup_source(index_path)()
    if lookup.version != tok.sid_version:
        log.warning(
            "the index's active version %s is not the tokenizer's %s: CPT follows the index",
            lookup.version,
            tok.sid_version,
        )
    topics = TopicNames.with_prefix(cfg.topic_prefix)
    uploads, watches = read_events(cfg.bootstrap, topics)
    params = None
    if args.base_checkpoint:
        dis = load_vocab_config(args.config).disambiguation_size  # from [sid]
        vocab, model_cfg, params = _warm_start(
            args.base_checkpoint, tok.level_sizes, dis, model_cfg
        )
    else:
        vocab = vocab_for_corpus(uploads, load_vocab_config(args.config), tok.level_sizes)
    try:
        corpus = build_corpus(uploads, watches, lookup, vocab, cpt_cfg.seq_len)
    except ValueError as err:  # nothing in Kafka has a SID yet
        print(f"plum trainer cpt: {err}", file=sys.stderr)
        return 1
    log.info("CPT corpus (sid_version %s): %s", lookup.version, corpus.describe())
    result = train_cpt(cpt_cfg, model_cfg, vocab, corpus, cpt_dir, params=params)
    print(json.dumps({"path": str(result.path), "final_loss": result.final_loss}))
    return 0


def _warm_start(base: str, level_sizes, disambiguation_size: int, model_cfg):
    import json as _json

    from trainer.vocab import Vocab
    from trainer.warmstart import config_from_hf, read_safetensors, warm_start

    base_dir = Path(base)
    vocab = Vocab.from_base_tokenizer(base_dir / "tokenizer.json", level_sizes, disambiguation_size)
    hf = _json.loads((base_dir / "config.json").read_text())
    cfg = config_from_hf(hf, max_len=model_cfg.max_len).with_vocab(vocab.size)
    ws = warm_start(read_safetensors(base_dir), cfg, vocab)
    log.info("warm start from %s: %d rows kept, %d new", base, ws.kept_rows, ws.new_rows)
    return vocab, cfg, ws.params


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum trainer run", description="continuous SFT")
    common_arguments(parser)
    parser.add_argument("--cpt", help="CPT checkpoint to start from (first start only)")
    parser.add_argument("--run-dir", help="checkpoints, vocab and archive of this run")
    parser.add_argument("--idle-exit", type=float, help="stop after this long without input")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--metrics-port", type=int, help="/metrics port (0: a free one; -1: none)")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (several processes)")
    parser.add_argument("--num-processes", type=int, help="processes of the job (default 1)")
    parser.add_argument("--process-id", type=int, help="this process, 0 .. num-processes - 1")
    args = parser.parse_args(argv)
    from streams.contracts.topics import TopicNames
    from trainer.data import index_lookup_source, load_data_config
    from trainer.loop import ContinuousTrainer, MissingInputError, RunPaths, trainer_runtime
    from trainer.sharding import initialize_distributed

    cfg = trainer_config(
        args,
        cpt_dir=args.cpt,
        run_dir=args.run_dir,
        idle_exit_s=args.idle_exit,
        max_steps=args.max_steps,
        metrics_port=args.metrics_port,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    # before any other JAX call: it fixes the device list the mesh spans
    initialize_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    index_path, cpt_dir, run_dir = state_paths(cfg)
    data_cfg = load_data_config(args.config)
    topic = TopicNames.with_prefix(cfg.topic_prefix).sft_examples
    trainer = ContinuousTrainer(
        cfg,
        data_cfg,
        RunPaths(run_dir, cpt_dir),
        cfg.bootstrap,
        topic,
        index_lookup_source(index_path),
    )
    try:  # SIGTERM/SIGINT: the runtime finishes the step, checkpoints and returns
        trainer_runtime(trainer).run()
    except MissingInputError as err:  # no CPT checkpoint / no SID index: say which
        print(f"plum trainer run: {err} (run `plum trainer cpt` first?)", file=sys.stderr)
        return 2
    print(json.dumps(trainer.counters.to_dict()))
    return 0
