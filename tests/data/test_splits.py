import pytest

from amoeba_search.data import SPLITS, Document, split_documents


def _docs(n, prefix="doc"):
    return [Document(f"{prefix}{i}", f"text {i}") for i in range(n)]


def test_splits_deterministic_disjoint_and_complete():
    docs = _docs(500)
    a, b = split_documents(docs, seed=3), split_documents(list(docs), seed=3)
    assert a == b and list(a) == list(SPLITS)
    ids = [{d.doc_id for d in a[name]} for name in SPLITS]
    assert sum(map(len, ids)) == len(docs) and set().union(*ids) == {d.doc_id for d in docs}
    assert 350 < len(a["train"]) < 450 and 25 < len(a["eval"]) < 80


def test_splits_stable_when_documents_are_added():
    docs = _docs(200)
    before = split_documents(docs)
    after = split_documents(docs[:100] + _docs(50, "new") + docs[100:])
    for name in SPLITS:
        assert [d for d in after[name] if not d.doc_id.startswith("new")] == before[name]


def test_seed_and_fractions_change_the_assignment():
    docs = _docs(300)
    assert split_documents(docs, seed=0) != split_documents(docs, seed=1)
    only_eval = split_documents(docs, fractions=(0, 0, 1))
    assert len(only_eval["eval"]) == 300 and not only_eval["train"]


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.1, 0.2), (1.1, -0.05, -0.05)])
def test_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_documents(_docs(3), fractions=fractions)
