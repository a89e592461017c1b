"""Token sequences the trainer learns from: SFT prompts, CPT behaviour and metadata text.

Every item is written as its SID tokens (trainer/vocab.py), looked up by video id in the
SID index version the trainer currently follows, so an example's tokens change when the
version is switched (examples carry video ids for exactly that reason).

SFT (paper section 2.3), prompt | target:

    <bos> <hist> [sid(h) <watch_ratio_b> <watch_time_b> <hours_since_b>]*  <ctx> sid(ctx)
    <tgt> | sid(target)

History items are oldest first and the oldest are dropped when the prompt would exceed
`max_prompt_len`; an item the index does not know yet is written `<unk>` + its features,
a missing context as `<unk>`. The paper also puts user features (demographics) in the
prompt; our events carry none, so the prompt has none. The loss covers the target's SID
tokens only.

CPT (paper section 2.2), a 50/50 mixture of

    behaviour   <bos> [sid(v) <watch_ratio_b> <watch_time_b> <hours_since_b>]* <eos>
                (hours since = hours between this watch and the user's previous one)
    metadata    <bos> Video sid(v) has title: {title} <eos>
                <bos> The topics in video sid(v) are: {topic}, {topic} <eos>

with the loss over every real token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from streams.contracts import schema
from trainer.vocab import InvalidSidError, Vocab


class UnknownTargetError(LookupError):
    """The example's target video has no SID in the followed index version (yet)."""


class TrainingSequence(NamedTuple):
    """One training sequence: tokens and the index of the first token the loss covers."""

    tokens: list[int]
    loss_start: int  # 1 for CPT (all but <bos>), len(prompt) for SFT
    weight: float = 1.0


class Batch(NamedTuple):
    """Right-padded model inputs for next-token training.

    inputs  int32 [batch, time]   tokens[:-1]
    targets int32 [batch, time]   tokens[1:]
    weights float32 [batch, time] loss weight of each target (0 = not trained on)
    mask    bool [batch, time]    the input position holds a real token
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class SidLookup:
    """video id -> SID codes under one index version."""

    version: str
    sids: Mapping[str, tuple[int, ...]]

    def tokens(self, vocab: Vocab, video_id: str | None) -> list[int] | None:
        """The video's SID tokens, or None when the index does not know it (or the vocab
        cannot write its SID, e.g. a disambiguation code beyond the vocabulary's)."""
        if video_id is None:
            return None
        codes = self.sids.get(video_id)
        if codes is None:
            return None
        try:
            return vocab.encode_sid(codes)
        except InvalidSidError:
            return None

    def unencodable(self, vocab: Vocab) -> int:
        """SIDs of this version the vocabulary cannot write (e.g. a disambiguation code
        beyond its range): their videos read as <unk> and are never a target, so the
        trainer counts them (plum_trainer_unencodable_sids) instead of hiding them."""
        bad = 0
        for codes in self.sids.values():
            try:
                vocab.sid_slots(codes)
            except InvalidSidError:
                bad += 1
        return bad


def _item_tokens(vocab: Vocab, sid: list[int] | None, item: schema.HistoryItem) -> list[int]:
    return (sid if sid is not None else [vocab.unk_id]) + vocab.feature_tokens(item)


def sft_prompt(
    example: schema.SftExample, lookup: SidLookup, vocab: Vocab, max_prompt_len: int
) -> list[int]:
    """The prompt of an SFT example (ends with <tgt>); history trimmed oldest-first to fit."""
    hist_id, ctx_id, tgt_id = (vocab.token_to_id(t) for t in ("<hist>", "<ctx>", "<tgt>"))
    ctx = lookup.tokens(vocab, example.context_video_id) or [vocab.unk_id]
    tail = [ctx_id, *ctx, tgt_id]
    head = [vocab.bos_id, hist_id]
    room = max_prompt_len - len(head) - len(tail)
    if room < 0:
        raise ValueError(f"max_prompt_len={max_prompt_len} cannot hold even an empty history")
    items: list[list[int]] = []
    used = 0
    for h in reversed(example.history):  # newest first, so the oldest are dropped
        toks = _item_tokens(vocab, lookup.tokens(vocab, h.video_id), h)
        if used + len(toks) > room:
            break
        items.append(toks)
        used += len(toks)
    body = [t for toks in reversed(items) for t in toks]
    return head + body + tail


def sft_sequence(
    example: schema.SftExample,
    lookup: SidLookup,
    vocab: Vocab,
    max_prompt_len: int,
    weight: float = 1.0,
) -> TrainingSequence:
    """Prompt + target SID tokens; raises UnknownTargetError when the target has no SID."""
    target = lookup.tokens(vocab, example.target_video_id)
    if target is None:
        raise UnknownTargetError(
            f"video {example.target_video_id!r} has no SID in version {lookup.version!r}"
        )
    prompt = sft_prompt(example, lookup, vocab, max_prompt_len)
    return TrainingSequence(prompt + target, len(prompt), weight)


@dataclass(frozen=True)
class Watch:
    """One watch of a user's behaviour sequence (CPT)."""

    video_id: str
    ts: int  # epoch ms
    watch_ratio: float
    watch_time_s: float


def behaviour_sequences(
    watches: Sequence[Watch], lookup: SidLookup, vocab: Vocab, max_len: int
) -> list[TrainingSequence]:
    """One user's watches (any order) -> CPT behaviour sequences of at most `max_len`
    tokens, cut into consecutive chunks; watches of videos without a SID are skipped."""
    chunks: list[TrainingSequence] = []
    current = [vocab.bos_id]
    prev_ts: int | None = None
    for w in sorted(watches, key=lambda w: w.ts):
        sid = lookup.tokens(vocab, w.video_id)
        if sid is None:
            continue
        hours = 0.0 if prev_ts is None else (w.ts - prev_ts) / 3_600_000
        prev_ts = w.ts
        item = schema.HistoryItem(w.video_id, w.watch_ratio, w.watch_time_s, hours)
        toks = sid + vocab.feature_tokens(item)
        if len(current) + len(toks) + 1 > max_len:
            if len(current) > 1:
                chunks.append(TrainingSequence([*current, vocab.eos_id], 1))
            current = [vocab.bos_id]
        current += toks
    if len(current) > 1:
        chunks.append(TrainingSequence([*current, vocab.eos_id], 1))
    return chunks


def metadata_sequences(
    video_id: str,
    title: str,
    topics: Sequence[str],
    lookup: SidLookup,
    vocab: Vocab,
    max_len: int,
) -> list[TrainingSequence]:
    """The CPT metadata sentences of one video (none when it has no SID)."""
    sid = lookup.tokens(vocab, video_id)
    if sid is None:
        return []
    out = []
    for before, after in (
        ("Video", f" has title: {title}"),
        ("The topics in video", f" are: {', '.join(topics)}"),
    ):
        toks = [vocab.bos_id, *vocab.encode_text(before + " "), *sid]
        toks += vocab.encode_text(after)
        toks = toks[: max_len - 1] + [vocab.eos_id]
        out.append(TrainingSequence(toks, 1))
    return out


def collate(sequences: Sequence[TrainingSequence], seq_len: int, pad_id: int) -> Batch:
    """Right-pad sequences (cut to seq_len + 1 tokens) into a next-token Batch."""
    b = len(sequences)
    inputs = np.full((b, seq_len), pad_id, np.int32)
    targets = np.full((b, seq_len), pad_id, np.int32)
    weights = np.zeros((b, seq_len), np.float32)
    mask = np.zeros((b, seq_len), bool)
    for i, seq in enumerate(sequences):
        toks = seq.tokens[: seq_len + 1]
        n = len(toks) - 1
        if n < 1:
            continue
        inputs[i, :n] = toks[:-1]
        targets[i, :n] = toks[1:]
        mask[i, :n] = True
        # target position j predicts token j + 1: the loss starts at loss_start - 1
        weights[i, max(seq.loss_start - 1, 0) : n] = seq.weight
    return Batch(inputs, targets, weights, mask)
