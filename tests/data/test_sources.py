import json
import sys

import pytest

from amoeba_search.data import CorpusNotAvailable, Document, describe, load_documents


def test_txt_file_one_document_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph,\nstill first.\n\nSecond.\n  \n\n\nThird.\n")
    docs = load_documents(path)
    assert [d.text for d in docs] == ["First paragraph,\nstill first.", "Second.", "Third."]
    assert len({d.doc_id for d in docs}) == 3 and docs == load_documents(str(path))


def test_directory_one_document_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n\nstill alpha")
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / "ignored.md").write_text("not text")
    assert load_documents(tmp_path) == [Document("a.txt", "alpha\n\nstill alpha"), Document("sub/b.txt", "beta")]


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"id": 7, "text": "seven"}) + "\n\n" + json.dumps({"text": "anon"}) + "\n")
    docs = load_documents(path)
    assert docs[0] == Document("7", "seven") and docs[1].text == "anon"


@pytest.mark.parametrize("line, match", [('{"body": "x"}', "text"), ("{not json", "not valid JSON")])
def test_malformed_jsonl_names_the_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{match}"):
        load_documents(path)


def test_unknown_corpus_did_you_mean():
    with pytest.raises(ValueError, match=r"Did you mean 'austen'\?.*austen, lee, wiki"):
        load_documents("austin")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported"):
        load_documents(tmp_path / "x.csv")


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(RuntimeError, match="pip install datasets"):
        load_documents("hf:wikitext:wikitext-2-raw-v1")


def test_describe_counts(tmp_path):
    docs = [Document(str(i), "x" * i) for i in range(1, 41)]
    info = describe(docs)
    assert info["documents"] == 40 and info["characters"] == sum(range(1, 41))
    assert sum(s["documents"] for s in info["splits"].values()) == 40


def test_missing_gensim_says_how_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(CorpusNotAvailable, match="pip install gensim"):
        load_documents("lee")
