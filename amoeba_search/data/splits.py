"""Train / calibration / evaluation splits by document: deterministic, disjoint, stable under additions.

Each document's split depends only on a SHA-256 of ``seed`` and its ``doc_id`` (never on Python's
randomized ``hash`` nor on the other documents), so adding documents moves none of the old ones.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from amoeba_search.data.document import Document
from amoeba_search.data.sources import Source, load_documents, source_name
from amoeba_search.errors import InputError

SPLITS = ("train", "calib", "eval")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"fractions must be three non-negative numbers (train, calib, eval) summing to 1, "
                         f"got {fractions}")
    return fractions


def _unit(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) drawn from the document's id and the seed."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    u, edge = _unit(doc_id, seed), 0.0
    for name, fraction in zip(SPLITS, check_fractions(fractions)):
        edge += fraction
        if u < edge:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fractions)) if f > 0)  # rounding at u ~ 1


def split_documents(docs: Sequence[Document], *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                    seed: int = 0) -> dict[str, list[Document]]:
    """``{"train": [...], "calib": [...], "eval": [...]}``, each in the documents' original order."""
    fractions = check_fractions(fractions)
    out = {name: [] for name in SPLITS}
    for doc in docs:
        out[split_of(doc.doc_id, fractions=fractions, seed=seed)].append(doc)
    return out


def describe(source: Source, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> dict:
    """Document and character counts, in all and per split (no tokenizer needed); JSON-ready."""
    docs = load_documents(source)
    splits = split_documents(docs, fractions=fractions, seed=seed)
    return {"source": source_name(source), **_count(docs), "splits": {k: _count(v) for k, v in splits.items()}}


def _count(docs: list[Document]) -> dict:
    return {"documents": len(docs), "characters": sum(len(d.text) for d in docs)}
