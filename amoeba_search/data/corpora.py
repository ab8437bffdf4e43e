"""Named corpora of real English text that install from packages, with no dataset hub needed.

Each entry names its loader and its preparer as ``"module:function"`` so that nothing heavy
(gensim, rdata) is imported until that corpus is used.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path

from amoeba_search.data.document import Document
from amoeba_search.errors import InputError, MissingDependency


class CorpusNotAvailable(MissingDependency):
    """A known corpus whose package is missing or not prepared; the message says how to install it."""


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    loader: str  # "module:function" -> list[Document]
    preparer: str  # "module:function" -> Path of the data, fetching it when it can
    install: str  # the command that makes the corpus available
    version: int = 1  # bump when the loader's output changes: it is part of the token-block cache key


CORPORA = {c.name: c for c in [
    Corpus("austen", "six Jane Austen novels, one document per chapter (Debian r-cran-janeaustenr)",
           "amoeba_search.data.austen:load", "amoeba_search.data.austen:prepare", "amoeba-prepare austen"),
    Corpus("lee", "ABC news articles, one document per article (gensim test data: lee_background.cor)",
           "amoeba_search.data.gensim_corpora:load_lee", "amoeba_search.data.gensim_corpora:lee_path",
           "pip install gensim"),
    Corpus("wiki", "shortened English Wikipedia dump, one document per article, markup stripped (gensim test data)",
           "amoeba_search.data.gensim_corpora:load_wiki", "amoeba_search.data.gensim_corpora:wiki_path",
           "pip install gensim"),
]}


def get_corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise InputError(unknown_source_message(name)) from None


def unknown_source_message(name: str) -> str:
    close = difflib.get_close_matches(name, CORPORA, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown corpus {name!r}.{hint} Known corpora: {', '.join(CORPORA)}; "
            "or give a .txt / .jsonl file, a directory of .txt files, or hf:NAME[:CONFIG]")


def _resolve(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def load_corpus(name: str) -> list[Document]:
    return _resolve(get_corpus(name).loader)()


def prepare_corpus(name: str) -> Path:
    """Fetch or locate a corpus's data (austen runs apt-get download); returns where it lies."""
    return _resolve(get_corpus(name).preparer)()
