import pytest
import torch

from amoeba_search.data import Document, token_blocks
from amoeba_search.paths import cache_dir


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    directory = tmp_path / "corpus"
    directory.mkdir()
    for i in range(30):
        (directory / f"{i:02d}.txt").write_text(f"Document number {i} says hello. " * 5)
    return directory


def test_blocks_are_the_split_text_joined_by_eos(tokenizer):
    docs = [Document(f"d{i}", f"doc {i} " * 20) for i in range(40)]
    fractions = (0.0, 0.0, 1.0)  # everything in eval: the stream is every document, in order
    blocks = token_blocks(docs, tokenizer, seq_len=16, fractions=fractions)
    stream = []
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert blocks.dtype == torch.long and blocks.shape == (len(stream) // 16, 16)
    assert blocks.flatten().tolist() == stream[:blocks.numel()]
    assert token_blocks(docs, tokenizer, seq_len=16, max_blocks=3, fractions=fractions).equal(blocks[:3])


def test_splits_give_different_blocks(tokenizer, corpus):
    train = token_blocks(corpus, tokenizer, split="train", seq_len=32)
    evaluation = token_blocks(corpus, tokenizer, split="eval", seq_len=32)
    assert len(train) > len(evaluation) > 0
    assert not {tuple(b) for b in evaluation.tolist()} & {tuple(b) for b in train.tolist()}


def test_cache_hit_and_invalidation(tokenizer, corpus):
    first = token_blocks(corpus, tokenizer, split="train", seq_len=32, max_blocks=10)
    files = list(cache_dir("blocks").glob("*.safetensors"))
    assert len(files) == 1
    second = token_blocks(corpus, tokenizer, split="train", seq_len=32, max_blocks=5)
    assert second.equal(first[:5]) and list(cache_dir("blocks").glob("*.safetensors")) == files
    token_blocks(corpus, tokenizer, split="train", seq_len=32, seed=1)  # other seed, other entry
    (corpus / "new.txt").write_text("a new document " * 40)  # changed source, other entry
    token_blocks(corpus, tokenizer, split="train", seq_len=32)
    assert len(list(cache_dir("blocks").glob("*.safetensors"))) == 3


def test_cache_is_read_not_rebuilt(tokenizer, corpus, monkeypatch):
    first = token_blocks(corpus, tokenizer, seq_len=32)
    monkeypatch.setattr("amoeba_search.data.blocks.load_documents", lambda source: pytest.fail("rebuilt"))
    assert token_blocks(corpus, tokenizer, seq_len=32).equal(first)


def test_not_enough_text(tokenizer, corpus):
    available = len(token_blocks(corpus, tokenizer, split="eval", seq_len=64))
    with pytest.raises(ValueError, match=rf"makes {available} blocks.*max_blocks <= {available}"):
        token_blocks(corpus, tokenizer, split="eval", seq_len=64, max_blocks=available + 1)
    with pytest.raises(ValueError, match="not enough text"):
        token_blocks([Document("a", "tiny")], tokenizer, seq_len=64, fractions=(0, 0, 1))


def test_bad_arguments(tokenizer, corpus):
    with pytest.raises(ValueError, match="split"):
        token_blocks(corpus, tokenizer, split="test")
    with pytest.raises(ValueError, match="positive"):
        token_blocks(corpus, tokenizer, seq_len=0)
