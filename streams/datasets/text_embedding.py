"""Content embeddings for items that only have text metadata (title, genres).

No pre-trained text encoder (sentence-transformers, a Hugging Face model) is installed
or downloadable offline here, so the embeddings are built from the corpus itself with
scikit-learn. Two named views, so the SID tokenizer sees several modalities per item
as ARCHITECTURE.md asks:

- `text` (`embed_texts`): TF-IDF over word uni/bi-grams *and* character 3–4-grams of the
  item's text (title, release year, genre words), the two blocks weighted equally, then
  `TruncatedSVD` (latent semantic analysis) to `dim` components. Character n-grams make
  "Star Wars" close to "Return of the Jedi (Star Wars…)" variants, sequels and
  translated titles; the genre words make the view topical rather than purely lexical.
- `genre` (`embed_labels`): every label (genre) gets a fixed pseudo-random Gaussian unit
  vector derived from a hash of its name and `seed`; an item's vector is the sum over
  its labels. This is a random projection of the multi-hot label vector: items sharing
  genres are close, the vector of a label never depends on the corpus (a new genre in a
  later upload does not move old items), and the width is fixed whatever the number
  of labels.

Both are deterministic (fixed `random_state` / hash seeds), finite, L2-normalised rows.
The `text` view is fitted on the whole corpus it is given, so the same file always
gives the same vectors; a row with no known token (an empty text) gets a pseudo-random
unit vector seeded by its text, finite and normalised but carrying no similarity.
If fewer than `dim` SVD components exist (a tiny corpus) the vector is zero-padded to
`dim`, so downstream code can rely on the width.

Shapes: `embed_texts(texts, dim)` -> float64 `[n_items, dim]`; same for `embed_labels`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

DEFAULT_SEED = 0


def l2_normalise(
    matrix: np.ndarray, texts: Sequence[str] | None = None, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row becomes a seeded random unit vector."""
    out = np.asarray(matrix, dtype=np.float64).copy()  # [n, dim]
    norms = np.linalg.norm(out, axis=1)
    for i in np.flatnonzero(norms <= 1e-12):
        key = texts[i] if texts is not None else str(i)
        out[i] = _hashed_unit_vector(f"zero-row:{key}", out.shape[1], seed)
        norms[i] = 1.0
    return out / norms[:, None]


def _hashed_unit_vector(name: str, dim: int, seed: int) -> np.ndarray:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def embed_texts(texts: Sequence[str], dim: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """LSA embedding of `texts`: word + char n-gram TF-IDF, TruncatedSVD, L2 norm. `[n, dim]`."""
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    n = len(texts)
    if n == 0:
        return np.zeros((0, dim))
    blocks = []
    for vectorizer in (
        TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), strip_accents="unicode", sublinear_tf=True
        ),
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 4), strip_accents="unicode", sublinear_tf=True
        ),
    ):
        try:
            blocks.append(vectorizer.fit_transform(texts))  # [n, vocab], rows L2-normalised
        except ValueError:
            # Empty vocabulary (every text empty or stop words only): that block adds nothing.
            continue
    if not blocks:
        return l2_normalise(np.zeros((n, dim)), texts, seed)
    features = sp.hstack(blocks).tocsr()  # [n, word_vocab + char_vocab]
    k = min(dim, features.shape[1] - 1, n - 1)
    if k >= 1:
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
        reduced = svd.fit_transform(features)  # [n, k]
    else:
        # One item or one feature: nothing to decompose; keep the raw (tiny) features.
        reduced = features.toarray()[:, :dim]
    padded = np.zeros((n, dim))
    padded[:, : reduced.shape[1]] = reduced
    return l2_normalise(padded, texts, seed)


def embed_labels(
    label_sets: Sequence[Sequence[str]], dim: int, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Random-projection embedding of label sets (see module docstring). `[n, dim]`."""
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    basis: dict[str, np.ndarray] = {}
    out = np.zeros((len(label_sets), dim))
    for i, labels in enumerate(label_sets):
        for label in sorted(set(labels)):
            if label not in basis:
                basis[label] = _hashed_unit_vector(f"label:{label}", dim, seed)
            out[i] += basis[label]
    return l2_normalise(out, ["|".join(sorted(set(s))) for s in label_sets], seed)
