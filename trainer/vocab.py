"""The trainer's token vocabulary: text tokens + special tokens + SID tokens + feature tokens.

Id layout (contiguous ranges, in this order):

    [0, text_size)      the text tokenizer: a byte-level BPE trained on item metadata (its
                        first ids are SPECIAL_TOKENS), or a base checkpoint's tokenizer
    special tokens      those of SPECIAL_TOKENS the text tokenizer lacks (none for ours)
    SID slot 0..L-1     `<sid_l{l}_{c}>` for code c of level l (0-based), one slot per level
    SID slot L          the disambiguation level, when disambiguation_size D > 0:
                        `<sid_l{L}_none>` for a SID of L codes, then `<sid_l{L}_{k}>` for
                        disambiguation code k in [0, D)
    feature tokens      `<watch_ratio_{b}>`, `<watch_time_{b}>`, `<hours_since_{b}>`

With a disambiguation level every SID is written as exactly L + 1 tokens (the "none"
token when the item needs no disambiguation), so the model always generates a fixed
number of SID tokens and the map codes <-> tokens is a bijection whatever convention the
SID index uses for the first item of a prefix.

Feature buckets: bucket b of edges e covers [e[b-1], e[b]) (bucket 0 is below e[0], the
last bucket is >= e[-1]), i.e. b = number of edges <= x. Defaults:

    watch ratio   10 buckets, edges 0.1 .. 0.9 (>= 0.9 incl. completions and re-watches)
    watch time    13 log-spaced buckets, edges 1 2 4 8 15 30 60 120 300 600 1200 3600 s
    hours since   13 log-spaced buckets, edges 1 min, 15 min, 1 h, 3 h, 6 h, 12 h, 1 d,
                  2 d, 4 d, 1 w, 2 w, 30 d (in hours)

The edges are saved with the vocabulary, so a checkpoint keeps the edges it was trained on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.config import VocabConfig

FORMAT_VERSION = 1
TEXT_FILE = "text_tokenizer.json"
VOCAB_FILE = "vocab.json"

PAD, BOS, EOS, UNK, SEP = "<pad>", "<bos>", "<eos>", "<unk>", "<sep>"
# <hist> / <ctx> / <tgt> open the parts of an SFT prompt (history | context | target);
# <unk> stands for a video the SID index does not know (yet).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, SEP, "<hist>", "<ctx>", "<tgt>")

WATCH_RATIO_EDGES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WATCH_TIME_EDGES_S: tuple[float, ...] = (1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1200, 3600)
HOURS_SINCE_EDGES: tuple[float, ...] = (
    1 / 60,
    0.25,
    1,
    3,
    6,
    12,
    24,
    48,
    96,
    168,
    336,
    720,
)
DEFAULT_FEATURE_EDGES: dict[str, tuple[float, ...]] = {
    "watch_ratio": WATCH_RATIO_EDGES,
    "watch_time": WATCH_TIME_EDGES_S,
    "hours_since": HOURS_SINCE_EDGES,
}
# which attribute of a history item each feature reads
_FEATURE_FIELDS = {
    "watch_ratio": "watch_ratio",
    "watch_time": "watch_time_s",
    "hours_since": "hours_since",
}


class InvalidSidError(ValueError):
    """Codes that are not a SID of this vocabulary, or tokens that are not SID tokens."""


class WatchFeatures(Protocol):
    """What feature_tokens reads: streams.contracts.schema.HistoryItem has these fields."""

    watch_ratio: float
    watch_time_s: float
    hours_since: float


def bucket(x: float, edges: Sequence[float]) -> int:
    """Number of edges <= x: bucket b covers [edges[b-1], edges[b])."""
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"feature value {x!r} must be finite and >= 0")
    lo, hi = 0, len(edges)
    while lo < hi:  # bisect_right, spelled out so edges may be any sequence
        mid = (lo + hi) // 2
        if edges[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def train_text_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """A byte-level BPE (GPT-2 style) trained on `texts`; special_tokens get ids 0.. ."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class Vocab:
    """Token ids for text, SIDs and watch features; see the module docstring for the layout."""

    def __init__(
        self,
        text: Tokenizer,
        sid_level_sizes: Sequence[int],
        disambiguation_size: int = 0,
        feature_edges: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        if not sid_level_sizes or min(sid_level_sizes) < 1:
            raise ValueError(f"sid_level_sizes={tuple(sid_level_sizes)} must be non-empty, >= 1")
        if disambiguation_size < 0:
            raise ValueError(f"disambiguation_size={disambiguation_size} must be >= 0")
        edges = dict(DEFAULT_FEATURE_EDGES if feature_edges is None else feature_edges)
        if set(edges) != set(DEFAULT_FEATURE_EDGES):
            raise ValueError(
                f"feature_edges keys {sorted(edges)} != {sorted(DEFAULT_FEATURE_EDGES)}"
            )
        for name, e in edges.items():
            if any(b <= a for a, b in zip(e, e[1:], strict=False)):
                raise ValueError(f"feature edges for {name} must increase: {tuple(e)}")
        self.text = text
        self.sid_level_sizes = tuple(int(s) for s in sid_level_sizes)
        self.disambiguation_size = int(disambiguation_size)
        self.feature_edges = {k: tuple(float(x) for x in v) for k, v in edges.items()}
        self.text_size = text.get_vocab_size(with_added_tokens=True)

        extra: list[str] = [s for s in SPECIAL_TOKENS if text.token_to_id(s) is None]
        self._slot_offsets: list[int] = []
        for level, size in enumerate(self.sid_level_sizes):
            self._slot_offsets.append(self.text_size + len(extra))
            extra += [f"<sid_l{level}_{c}>" for c in range(size)]
        if self.disambiguation_size:
            level = self.num_levels
            self._slot_offsets.append(self.text_size + len(extra))
            extra.append(f"<sid_l{level}_none>")
            extra += [f"<sid_l{level}_{k}>" for k in range(self.disambiguation_size)]
        self._sid_end = self.text_size + len(extra)
        self._feature_offsets: dict[str, int] = {}
        for name in DEFAULT_FEATURE_EDGES:  # fixed order
            self._feature_offsets[name] = self.text_size + len(extra)
            extra += [f"<{name}_{b}>" for b in range(len(self.feature_edges[name]) + 1)]
        self._extra = extra
        self._extra_ids = {s: self.text_size + i for i, s in enumerate(extra)}
        if len(self._extra_ids) != len(extra):
            raise ValueError("duplicate extra token strings")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.sep_id = (
            self.token_to_id(s) for s in (PAD, BOS, EOS, UNK, SEP)
        )

    # ---- sizes and lookups
    @property
    def size(self) -> int:
        return self.text_size + len(self._extra)

    def __len__(self) -> int:
        return self.size

    @property
    def num_levels(self) -> int:
        """L: SID levels from the codebooks (not counting disambiguation)."""
        return len(self.sid_level_sizes)

    @property
    def num_sid_slots(self) -> int:
        """Tokens per SID: L, plus one for the disambiguation level when it exists."""
        return self.num_levels + (1 if self.disambiguation_size else 0)

    @property
    def num_feature_tokens(self) -> int:
        """Tokens `feature_tokens` writes per history item."""
        return len(DEFAULT_FEATURE_EDGES)

    @property
    def sid_slot_sizes(self) -> tuple[int, ...]:
        """Tokens in each SID slot (the disambiguation slot has D codes + "none")."""
        extra = (self.disambiguation_size + 1,) if self.disambiguation_size else ()
        return self.sid_level_sizes + extra

    @property
    def sid_slot_offsets(self) -> tuple[int, ...]:
        """Token id of slot-local code 0 in each SID slot."""
        return tuple(self._slot_offsets)

    def token_to_id(self, token: str) -> int | None:
        if token in self._extra_ids:
            return self._extra_ids[token]
        return self.text.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        if 0 <= token_id < self.text_size:
            return self.text.id_to_token(token_id)
        if self.text_size <= token_id < self.size:
            return self._extra[token_id - self.text_size]
        raise IndexError(f"token id {token_id} outside the vocabulary [0, {self.size})")

    def tokens(self) -> list[str]:
        """Every token string, by id."""
        return [self.id_to_token(i) for i in range(self.size)]

    # ---- text
    def encode_text(self, text: str) -> list[int]:
        """Text -> token ids, without any bos/eos (callers frame sequences themselves)."""
        return self.text.encode(text, add_special_tokens=False).ids

    def decode_text(self, ids: Iterable[int]) -> str:
        return self.text.decode([i for i in ids if 0 <= i < self.text_size])

    # ---- SIDs
    def sid_token_range(self, level: int) -> tuple[int, int]:
        """[start, stop) of the token ids of SID slot `level` (0-based; L = disambiguation)."""
        if not 0 <= level < self.num_sid_slots:
            raise ValueError(f"SID level {level} outside [0, {self.num_sid_slots})")
        start = self._slot_offsets[level]
        return start, start + self.sid_slot_sizes[level]

    def sid_slots(self, codes: Sequence[int]) -> tuple[int, ...]:
        """A SID's codes (L, or L + 1 with a disambiguation code) -> slot-local codes."""
        codes = tuple(int(c) for c in codes)
        n, dis = self.num_levels, self.disambiguation_size
        if len(codes) not in ((n, n + 1) if dis else (n,)):
            want = f"{n} or {n + 1}" if dis else f"{n}"
            raise InvalidSidError(f"SID {codes} has {len(codes)} codes; expected {want}")
        for level, (c, size) in enumerate(zip(codes[:n], self.sid_level_sizes, strict=True)):
            if not 0 <= c < size:
                raise InvalidSidError(f"SID {codes}: code {c} at level {level} not in [0, {size})")
        if not dis:
            return codes
        if len(codes) == n:
            return codes + (0,)
        if not 0 <= codes[n] < dis:
            raise InvalidSidError(f"SID {codes}: disambiguation code {codes[n]} not in [0, {dis})")
        return codes[:n] + (codes[n] + 1,)

    def sid_from_slots(self, slots: Sequence[int]) -> tuple[int, ...]:
        """Inverse of sid_slots."""
        slots = tuple(int(s) for s in slots)
        if len(slots) != self.num_sid_slots:
            raise InvalidSidError(f"{len(slots)} slot codes; expected {self.num_sid_slots}")
        for level, (c, size) in enumerate(zip(slots, self.sid_slot_sizes, strict=True)):
            if not 0 <= c < size:
                raise InvalidSidError(f"slot code {c} at level {level} not in [0, {size})")
        n = self.num_levels
        if not self.disambiguation_size or slots[n] == 0:
            return slots[:n]
        return slots[:n] + (slots[n] - 1,)

    def encode_sid(self, codes: Sequence[int]) -> list[int]:
        """A SID's codes -> its num_sid_slots token ids."""
        return [off + c for off, c in zip(self._slot_offsets, self.sid_slots(codes), strict=True)]

    def decode_sid(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        """num_sid_slots token ids, level by level -> the SID's codes.

        Raises InvalidSidError for a wrong count, a non-SID token, or a token of the wrong level.
        """
        ids = [int(t) for t in token_ids]
        if len(ids) != self.num_sid_slots:
            raise InvalidSidError(f"{len(ids)} tokens {ids}; a SID has {self.num_sid_slots}")
        slots = []
        for level, t in enumerate(ids):
            start, stop = self.sid_token_range(level)
            if not start <= t < stop:
                what = self.id_to_token(t) if 0 <= t < self.size else "out of range"
                raise InvalidSidError(
                    f"token {t} ({what}) at position {level} is not a level-{level} SID token"
                )
            slots.append(t - start)
        return self.sid_from_slots(slots)

    def is_sid_token(self, token_id: int) -> bool:
        return self._slot_offsets[0] <= token_id < self._sid_end

    # ---- watch features
    def feature_token_range(self, name: str) -> tuple[int, int]:
        if name not in self._feature_offsets:
            raise ValueError(f"unknown feature {name!r}; known: {sorted(self._feature_offsets)}")
        start = self._feature_offsets[name]
        return start, start + len(self.feature_edges[name]) + 1

    def feature_token(self, name: str, value: float) -> int:
        start, _ = self.feature_token_range(name)
        return start + bucket(float(value), self.feature_edges[name])

    def feature_tokens(self, item: WatchFeatures) -> list[int]:
        """[watch ratio, watch time, hours since] token ids of one history item."""
        return [
            self.feature_token(name, getattr(item, _FEATURE_FIELDS[name]))
            for name in DEFAULT_FEATURE_EDGES
        ]

    # ---- persistence
    def save(self, directory: Path | str) -> Path:
        """Write text_tokenizer.json and vocab.json into `directory` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text.save(str(directory / TEXT_FILE))
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "size": self.size,
            "text_size": self.text_size,
            "sid_level_sizes": list(self.sid_level_sizes),
            "disambiguation_size": self.disambiguation_size,
            "feature_edges": {k: list(v) for k, v in self.feature_edges.items()},
            "extra_tokens": self._extra,
        }
        (directory / VOCAB_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> Vocab:
        directory = Path(directory)
        meta = json.loads((directory / VOCAB_FILE).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / VOCAB_FILE}: format {meta.get('format')!r} is not {FORMAT_VERSION}"
            )
        vocab = cls(
            Tokenizer.from_file(str(directory / TEXT_FILE)),
            meta["sid_level_sizes"],
            meta["disambiguation_size"],
            meta["feature_edges"],
        )
        if vocab._extra != meta["extra_tokens"] or vocab.size != meta["size"]:
            raise ValueError(f"{directory}: the rebuilt vocabulary differs from the saved one")
        return vocab

    @classmethod
    def from_base_tokenizer(
        cls,
        tokenizer_json: Path | str,
        sid_level_sizes: Sequence[int],
        disambiguation_size: int = 0,
    ) -> Vocab:
        """Text part = a base checkpoint's tokenizer.json, ids unchanged (for warm starts)."""
        return cls(Tokenizer.from_file(str(tokenizer_json)), sid_level_sizes, disambiguation_size)


def build_vocab(texts: Iterable[str], config: VocabConfig, sid_level_sizes: Sequence[int]) -> Vocab:
    """Train the text BPE on item metadata `texts` and lay out the whole vocabulary."""
    text = train_text_tokenizer(texts, config.text_vocab_size, config.min_frequency)
    return Vocab(text, sid_level_sizes, config.disambiguation_size)
