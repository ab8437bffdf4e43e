"""The real corpora, from packages (slow: gensim's Wikipedia dump takes a few seconds to parse)."""
import pytest

from amoeba_search.data import SPLITS, load_documents, split_documents
from amoeba_search.data.austen import find_index

pytestmark = pytest.mark.slow


def _check(docs, at_least):
    assert len(docs) >= at_least
    assert len({d.doc_id for d in docs}) == len(docs)
    assert all(d.text.strip() for d in docs)
    splits = split_documents(docs)
    ids = [{d.doc_id for d in splits[name]} for name in SPLITS]
    assert all(ids) and sum(map(len, ids)) == len(docs) == len(set().union(*ids))


@pytest.mark.skipif(find_index() is None, reason="austen is not prepared: run `amoeba-prepare austen`")
def test_austen_chapters():
    docs = load_documents("austen")
    _check(docs, 250)  # 269 chapters in six novels
    assert docs[0].doc_id == "emma/ch01" and docs[0].text.startswith("CHAPTER I\n\nEmma Woodhouse, handsome")
    assert {d.doc_id.split("/")[0] for d in docs} == {"emma", "mansfieldpark", "northangerabbey", "persuasion",
                                                       "prideprejudice", "sensesensibility"}


def test_lee_articles():
    _check(load_documents("lee"), 290)


def test_wiki_articles_without_markup():
    docs = load_documents("wiki")
    _check(docs, 90)
    text = "\n".join(d.text for d in docs)
    assert "Anarchism is a political philosophy" in text
    for markup in ("'''", "[[", "{{", "<ref", "==History=="):
        assert markup not in text

