"""One entry point from a source to documents, whatever the source is.

A source is a corpus name (``austen``, ``lee``, ``wiki``), a local path (``.txt``, ``.jsonl``, or a
directory of ``.txt`` files), ``hf:NAME[:CONFIG]`` for a Hugging Face dataset when online, or a
sequence of :class:`Document` already in memory. A corpus name wins over a same-named local path
(write ``./lee`` for the path).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from amoeba_search.data.corpora import CORPORA, get_corpus, load_corpus, unknown_source_message
from amoeba_search.data.document import Document, text_id
from amoeba_search.data.files import SUFFIXES, path_fingerprint, read_path
from amoeba_search.errors import InputError, MissingDependency

Source = Union[str, os.PathLike, Sequence[Document]]


def load_documents(source: Source) -> list[Document]:
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    text = os.fspath(source)
    if text.startswith("hf:"):
        return _load_hf(text[3:])
    if text in CORPORA:
        return load_corpus(text)
    return read_path(_existing_path(text))


def source_fingerprint(source: Source) -> dict:
    """What identifies a source's content, cheaply (no loading): the token-block cache key uses it."""
    if not isinstance(source, (str, os.PathLike)):
        digest = hashlib.sha256()
        for doc in source:
            digest.update(f"{doc.doc_id}\0{text_id(doc.text)}\0".encode())
        return {"documents": digest.hexdigest()}
    text = os.fspath(source)
    if text.startswith("hf:"):
        return {"hf": text[3:]}
    if text in CORPORA:
        return {"corpus": text, "version": get_corpus(text).version}
    return {"files": path_fingerprint(_existing_path(text))}


def source_name(source: Source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{len(source)} documents>"


def _existing_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists():
        return path
    if path.suffix in SUFFIXES or os.sep in text:
        raise FileNotFoundError(f"no such file or directory: {text}")
    raise InputError(unknown_source_message(text))


def _load_hf(spec: str) -> list[Document]:
    """Every row of every split of the dataset is one document (its ``text`` field); we split ourselves."""
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise MissingDependency(f"source hf:{spec} needs the datasets package: `pip install datasets`") from None
    try:
        splits = datasets.load_dataset(name, config or None)
    except Exception as err:  # offline, unknown name, bad config: all surface here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingDependency(f"could not load hf:{spec} (offline? no such dataset?): {first}") from err
    docs = []
    for split_name in sorted(splits):
        if "text" not in splits[split_name].column_names:
            raise InputError(f"hf:{spec} split {split_name!r} has no 'text' column "
                             f"(columns: {', '.join(splits[split_name].column_names)})")
        docs += [Document(text_id(t), t) for t in splits[split_name]["text"] if t.strip()]
    return docs
