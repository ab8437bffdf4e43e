"""Two corpora shipped inside the gensim wheel's test data: ABC news (lee) and a Wikipedia dump (wiki)."""
from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path

from amoeba_search.data.corpora import CorpusNotAvailable
from amoeba_search.data.document import Document

LEE_FILE = "lee_background.cor"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _test_data(filename: str, corpus: str) -> Path:
    # find_spec locates the package without importing it (importing gensim takes about a second).
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusNotAvailable(f"corpus {corpus!r} needs gensim's test data; install it with `pip install gensim`")
    path = Path(next(iter(spec.submodule_search_locations)), "test", "test_data", filename)
    if not path.is_file():
        raise CorpusNotAvailable(f"corpus {corpus!r}: {path} is missing; reinstall with "
                                 "`pip install --force-reinstall gensim`")
    return path


def lee_path() -> Path:
    return _test_data(LEE_FILE, "lee")


def wiki_path() -> Path:
    return _test_data(WIKI_FILE, "wiki")


def load_lee() -> list[Document]:
    lines = lee_path().read_text(encoding="utf-8").splitlines()
    return [Document(f"lee/{i:03d}", line.strip()) for i, line in enumerate(lines) if line.strip()]


def load_wiki() -> list[Document]:
    """Articles of the main namespace, redirects and stubs (under 50 words) left out."""
    path = wiki_path()
    from gensim.corpora.wikicorpus import ARTICLE_MIN_WORDS, extract_pages, filter_wiki

    docs = []
    with bz2.open(path) as handle:
        for title, markup, pageid in extract_pages(handle, filter_namespaces=("0",)):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = _finish(filter_wiki(markup))  # removes links, templates, refs, tables, files, comments
            if len(text.split()) >= ARTICLE_MIN_WORDS:
                docs.append(Document(f"wiki/{pageid}", f"{title}\n\n{text}"))
    return docs


def _finish(text: str) -> str:
    # filter_wiki keeps three kinds of markup: ''italic''/'''bold''' quotes, == heading == signs,
    # and the blank lines left where removed blocks stood.
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
