"""Text in, token blocks out: documents from corpora, files or HF datasets; splits by document; blocks.

>>> from amoeba_search.data import token_blocks
>>> blocks = token_blocks("austen", tokenizer, split="calib", seq_len=512, max_blocks=64)  # (64, 512)
"""
from amoeba_search.data.blocks import token_blocks, tokenizer_fingerprint
from amoeba_search.data.corpora import CORPORA, CorpusNotAvailable, prepare_corpus
from amoeba_search.data.document import Document
from amoeba_search.data.sources import Source, load_documents
from amoeba_search.data.splits import DEFAULT_FRACTIONS, SPLITS, describe, split_documents

__all__ = ["CORPORA", "DEFAULT_FRACTIONS", "SPLITS", "CorpusNotAvailable", "Document", "Source", "describe",
           "load_documents", "prepare_corpus", "split_documents", "token_blocks", "tokenizer_fingerprint"]
