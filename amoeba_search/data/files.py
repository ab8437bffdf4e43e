"""Local text files: ``.txt`` files, directories of them, and JSONL with a ``text`` field.

- a directory: every ``*.txt`` below it is one document, named by its relative path;
- a single ``.txt`` file: each paragraph (text between blank lines) is one document, named by its
  content, so inserting a paragraph moves no other paragraph to another split;
- a ``.jsonl`` file: each non-empty line is an object whose ``text`` is one document, named by its
  ``id`` field when present, else by its content.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from amoeba_search.data.document import Document, text_id
from amoeba_search.errors import InputError

SUFFIXES = (".txt", ".jsonl")


def _txt_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.txt") if p.is_file())


def read_path(path: Path) -> list[Document]:
    """The documents of a local source; a source without any text is a ``ValueError`` naming it."""
    if path.is_dir():
        docs = [Document(str(p.relative_to(path)), _read_text(p)) for p in _txt_files(path)]
        if not any(d.text.strip() for d in docs):
            raise InputError(f"directory {path} holds no .txt file with text; put .txt documents in it or give "
                             "another source")
        return docs
    if path.suffix == ".txt":
        paragraphs = (p.strip() for p in re.split(r"\n\s*\n", _read_text(path)))
        docs = [Document(text_id(p), p) for p in paragraphs if p]
    elif path.suffix == ".jsonl":
        docs = _read_jsonl(path)
    else:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; use .txt, .jsonl or a directory of .txt "
                         "files")
    if not docs:
        raise InputError(f"{path} holds no text (an empty file); give a file with documents in it")
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text (byte {err.start}); convert it to UTF-8") from None


def jsonl_records(path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-empty line of a JSONL file; a bad line is a one-line
    ``ValueError`` naming the file and line."""
    with open(path, encoding="utf-8") as handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        except UnicodeDecodeError:
            raise InputError(f"{path}:{lineno + 1}: not UTF-8 text; convert the file to UTF-8") from None


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for lineno, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{lineno}: expected an object with a string 'text' field")
        text = record["text"]
        docs.append(Document(str(record["id"]) if "id" in record else text_id(text), text))
    return docs


def path_fingerprint(path: Path) -> list:
    """What identifies a local source's content for caching: resolved path, size and mtime of each file."""
    files = _txt_files(path) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
