"""`plum bench tokenizer`: the SID-v1 vs SID-v2 ablation (tokenizer/ablation.py)."""

from tokenizer.ablation import cli

__all__ = ["cli"]
