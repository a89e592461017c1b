"""`plum tokenizer SUBCOMMAND`: dispatch only. Each subcommand's module exposes
`cli(argv: list[str]) -> int` and is imported only when asked for (JAX is slow to import)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("tokenizer.train", "train the SID-v2 RQ-VAE and write an orbax checkpoint"),
    "report": ("tokenizer.report", "SID uniqueness, codebook use, reconstruction, alignment"),
    "ablation": (
        "tokenizer.ablation",
        "SID-v1 vs SID-v2 ablation (what `plum bench tokenizer` runs)",
    ),
    "serve": (
        "tokenizer.service_cli:serve",
        "the streaming SID assignment service (uploads -> SIDs)",
    ),
    "reindex": (
        "tokenizer.service_cli:reindex_cli",
        "assign every known video under a new tokenizer version",
    ),
    "switch": ("tokenizer.service_cli:switch_cli", "make a SID version the active one"),
    "index": ("tokenizer.service_cli:index_cli", "show the local SID index (versions, sizes)"),
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
    module, _, func = SUBCOMMANDS[name][0].partition(":")
    return int(getattr(importlib.import_module(module), func or "cli")(rest) or 0)
