"""`plum tokenizer SUBCOMMAND`: dispatch only. Each subcommand's module exposes
`cli(argv: list[str]) -> int` and is imported only when asked for (JAX is slow to import)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("tokenizer.train", "train the SID-v2 RQ-VAE and write an orbax checkpoint"),
    "report": ("tokenizer.report", "SID uniqueness, codebook use, reconstruction, alignment"),
    "ablation": ("tokenizer.ablation", "SID-v1 vs SID-v2 ablation (what `plum bench tokenizer` runs)"),
    # "serve" and "reindex" (the SID assignment service) register here.
}


def usage() -> str:
    lines = ["usage: plum tokenizer SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"plum tokenizer: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[name][0]).cli(rest) or 0)
