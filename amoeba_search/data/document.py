"""The unit every source yields and every split keeps whole: one document."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """``doc_id`` names the document stably (splits hash it); ``text`` is plain text, markup removed."""

    doc_id: str
    text: str


def text_id(text: str) -> str:
    """A content-derived id, for sources without names: identical texts share it, so share a split."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
