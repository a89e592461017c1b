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

The next-item ("sequence") layout (`sequence_prompt`) writes the history alone, each
item's time feature the gap to the item before it, and no context:

    <bos> <hist> [sid(h) <watch_ratio_b> <watch_time_b> <gap_b>]*  | sid(target)

so every prefix of a user's sequence is the prompt of the item after it, and one causal
pass over a window of a user's items (`next_item_sequence`) trains every position at once.

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
from typing import Any, NamedTuple

import numpy as np

from streams.contracts import schema
from trainer.vocab import InvalidSidError, Vocab

HOUR_MS = 3_600_000.0  # history items carry hours (schema.HistoryItem.hours_since)
# how an SFT example is written as a prompt (`prompt_for`): "target" = `sft_prompt`,
# "sequence" = `sequence_prompt`. A trainer run keeps one for good ([trainer_data]
# prompt_layout, saved in every checkpoint); the gate and serving prompt in the layout the
# checkpoint was trained in.
PROMPT_LAYOUTS = ("target", "sequence")


def saved_prompt_layout(meta: Mapping[str, Any], default: str = "target") -> str:
    """The layout a trainer checkpoint's run wrote its prompts in ([trainer_data]
    prompt_layout, saved in the meta's "data_config"); `default` when the meta has none
    (a run from before the setting was trained in "target")."""
    return str((meta.get("data_config") or {}).get("prompt_layout", default))


class UnknownTargetError(LookupError):
    """The example's target video has no SID in the followed index version (yet)."""


class TrainingSequence(NamedTuple):
    """One training sequence: tokens and the index of the first token the loss covers."""

    tokens: list[int]
    loss_start: int  # 1 for CPT (all but <bos>), len(prompt) for SFT
    weight: float = 1.0
    # per token (same length as tokens): True where the loss covers it; None = every
    # token from loss_start on. The next-item layout trains on the SID tokens only.
    loss_mask: Sequence[bool] | None = None


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


def target_tokens(example: schema.SftExample, lookup: SidLookup, vocab: Vocab) -> list[int]:
    """The SID tokens of the example's target; UnknownTargetError when it has no SID."""
    target = lookup.tokens(vocab, example.target_video_id)
    if target is None:
        raise UnknownTargetError(
            f"video {example.target_video_id!r} has no SID in version {lookup.version!r}"
        )
    return target


def sft_sequence(
    example: schema.SftExample,
    lookup: SidLookup,
    vocab: Vocab,
    max_prompt_len: int,
    weight: float = 1.0,
    layout: str = "target",
) -> TrainingSequence:
    """The example's prompt in `layout` (`prompt_for`) + its target's SID tokens, the loss
    on those alone; raises UnknownTargetError when the target has no SID."""
    target = target_tokens(example, lookup, vocab)
    prompt = prompt_for(example, lookup, vocab, max_prompt_len, layout)
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
        hours = 0.0 if prev_ts is None else (w.ts - prev_ts) / HOUR_MS
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


# ---------------------------------------------------------------------------- next-item layout


def sequence_prompt(
    history: Sequence[schema.HistoryItem], lookup: SidLookup, vocab: Vocab, max_prompt_len: int
) -> list[int]:
    """The next-item ("sequence") layout's prompt: the history alone, every item followed
    by its features, the time feature being the hours since the previous history item
    (0 for the oldest kept); the model then writes the next item's SID.

        <bos> <hist> [sid(h) <watch_ratio_b> <watch_time_b> <gap_b>]*  | sid(next)

    Unlike the "target" layout (`sft_prompt`), every prefix of a user's sequence is the
    prompt of its next item, so one causal pass trains every position at once
    (`next_item_sequence`, `every_position_sequence`) and gives each position the loss its
    one-target example would. The oldest items are dropped to fit `max_prompt_len`; an
    item without a SID is `<unk>`; a gap that would be negative (history not in time
    order) is written as 0.
    """
    items = _sequence_items(history, lookup, vocab, max_prompt_len)
    return [vocab.bos_id, vocab.token_to_id("<hist>"), *(t for _, toks in items for t in toks)]


def _sequence_items(
    history: Sequence[schema.HistoryItem], lookup: SidLookup, vocab: Vocab, max_prompt_len: int
) -> list[tuple[bool, list[int]]]:
    """`sequence_prompt`'s history items, oldest kept first: (has a SID, its tokens)."""
    room = max_prompt_len - 2
    if room < 0:
        raise ValueError(f"max_prompt_len={max_prompt_len} cannot hold even an empty history")
    ms = [round(h.hours_since * HOUR_MS) for h in history]  # ms before the target
    kept: list[int] = []  # indices into history, newest first, then reversed
    used = 0
    for j in range(len(history) - 1, -1, -1):  # newest first, so the oldest are dropped
        n = vocab.num_sid_slots + vocab.num_feature_tokens
        if used + n > room:
            break
        kept.append(j)
        used += n
    kept.reverse()
    items: list[tuple[bool, list[int]]] = []
    for pos, j in enumerate(kept):
        # an item older than the one before it (a history not in time order) gets gap 0
        gap_ms = 0 if pos == 0 else max(0, ms[kept[pos - 1]] - ms[j])
        h = history[j]
        item = schema.HistoryItem(h.video_id, h.watch_ratio, h.watch_time_s, gap_ms / HOUR_MS)
        sid = lookup.tokens(vocab, h.video_id)
        items.append((sid is not None, _item_tokens(vocab, sid, item)))
    return items


def every_position_sequence(
    example: schema.SftExample,
    lookup: SidLookup,
    vocab: Vocab,
    max_prompt_len: int,
    weight: float = 1.0,
) -> TrainingSequence:
    """An SFT example in the next-item layout trained at every position: its
    `sequence_prompt` + its target's SID, the loss on the target's SID tokens and on those
    of every history item in the prompt after the first that has a SID. By causality each
    position gets the loss of the one-target example whose history is the items before it
    in the prompt, so one row trains up to history_len targets for the cost of one.
    Raises UnknownTargetError when the target has no SID.

    The history carries no click flag: a history item the user saw but did not click
    (the simulator's previews) is trained as a target too."""
    target = target_tokens(example, lookup, vocab)
    tokens = [vocab.bos_id, vocab.token_to_id("<hist>")]
    mask = [False, False]
    for n, (has_sid, toks) in enumerate(
        _sequence_items(example.history, lookup, vocab, max_prompt_len)
    ):
        sid_len = vocab.num_sid_slots if has_sid and n > 0 else 0
        tokens += toks
        mask += [True] * sid_len + [False] * (len(toks) - sid_len)
    return TrainingSequence(tokens + target, 2, weight, mask + [True] * len(target))


def next_item_sequence(
    watches: Sequence[Watch], lookup: SidLookup, vocab: Vocab, weight: float = 1.0
) -> TrainingSequence | None:
    """One window of a user's watches (time order) as a next-item training sequence: the
    `sequence_prompt` of the last watch with every item written out, the loss on the SID
    tokens of every item but the first (each predicted from the items before it).
    Watches of videos without a SID are skipped; None when fewer than 2 remain."""
    hist_id = vocab.token_to_id("<hist>")
    tokens = [vocab.bos_id, hist_id]
    mask = [False, False]
    prev_ts: int | None = None
    n_items = 0
    for w in watches:
        sid = lookup.tokens(vocab, w.video_id)
        if sid is None:
            continue
        gap_ms = 0 if prev_ts is None else w.ts - prev_ts
        prev_ts = w.ts
        item = schema.HistoryItem(w.video_id, w.watch_ratio, w.watch_time_s, gap_ms / HOUR_MS)
        feats = vocab.feature_tokens(item)
        tokens += sid + feats
        mask += [n_items > 0] * len(sid) + [False] * len(feats)
        n_items += 1
    if n_items < 2:
        return None
    return TrainingSequence(tokens, 1, weight, mask)


def prompt_for(
    example: schema.SftExample,
    lookup: SidLookup,
    vocab: Vocab,
    max_prompt_len: int,
    layout: str = "target",
) -> list[int]:
    """The prompt of `example` in `layout` ("target": `sft_prompt`, "sequence":
    `sequence_prompt` of its history)."""
    if layout == "target":
        return sft_prompt(example, lookup, vocab, max_prompt_len)
    if layout == "sequence":
        return sequence_prompt(example.history, lookup, vocab, max_prompt_len)
    raise ValueError(f"prompt layout {layout!r}: must be one of {PROMPT_LAYOUTS}")


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
        if seq.loss_mask is not None:
            covered = np.asarray(seq.loss_mask[1 : n + 1], bool)
            covered[: max(seq.loss_start - 1, 0)] = False
            weights[i, :n] = np.where(covered, seq.weight, 0.0)
        else:
            weights[i, max(seq.loss_start - 1, 0) : n] = seq.weight
    return Batch(inputs, targets, weights, mask)
