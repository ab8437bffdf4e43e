"""Six Jane Austen novels from the Debian package r-cran-janeaustenr, read without R.

``prepare()`` runs ``apt-get download`` and ``dpkg-deb -x`` into the cache. The novels sit in R's
lazy-load database ``data/Rdata.rdb``: the ``.rdx`` index (a gzipped RDS) maps each novel to an
offset and length in the ``.rdb``, where a 4-byte length precedes a zlib stream of one serialized
character vector (one element per line of text), which the ``rdata`` package parses.
One document is one chapter, ``"<novel>/ch<NN>"``, so no chapter is ever shared between splits.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from amoeba_search.data.corpora import CorpusNotAvailable
from amoeba_search.data.document import Document
from amoeba_search.paths import atomic_dir, cache_dir

PACKAGE = "r-cran-janeaustenr"
INDEX = "Rdata.rdx"
SYSTEM_DIRS = [Path("/usr/lib/R/site-library/janeaustenr"), Path("/usr/local/lib/R/site-library/janeaustenr")]
CHAPTER = re.compile(r"^chapter [\divxlc]+", re.IGNORECASE)  # the heading convention of tidytext


def _extracted() -> Path:
    return cache_dir("corpora", "austen") / "package"


def find_index() -> Path | None:
    """The ``Rdata.rdx`` of a prepared cache or of an R installation, if there is one."""
    for root in [_extracted(), *SYSTEM_DIRS]:
        found = sorted(root.rglob(INDEX)) if root.is_dir() else []
        if found:
            return found[0]
    return None


def prepare() -> Path:
    """Download and extract the Debian package into the cache (once); returns the index file."""
    index = find_index()
    if index is not None:
        return index
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise CorpusNotAvailable(f"corpus 'austen' needs {tool} (Debian/Ubuntu) to fetch {PACKAGE}")
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(_extracted(), overwrite=True) as out:
        if _run(["apt-get", "download", PACKAGE], tmp).returncode != 0:
            _run(["apt-get", "update"], tmp)  # a fresh machine may have empty package lists
            _check(_run(["apt-get", "download", PACKAGE], tmp), hint=" (as root, run `apt-get update` first)")
        deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        _check(_run(["dpkg-deb", "-x", str(deb), str(out)], tmp))
    index = find_index()
    if index is None:
        raise CorpusNotAvailable(f"{PACKAGE} holds no {INDEX}: its layout changed; please report it")
    return index


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _check(result: subprocess.CompletedProcess, hint: str = "") -> None:
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise CorpusNotAvailable(f"`{' '.join(result.args)}` failed: {lines[-1]}{hint}")


def read_novels(index: Path) -> dict[str, list[str]]:
    """Novel name -> its lines, from R's lazy-load database beside ``index``."""
    import rdata

    table = rdata.read_rds(index)
    if int(table["compressed"][0]) != 1:  # 1 (TRUE) is zlib; 2 and 3 are bzip2 and xz
        raise CorpusNotAvailable(f"{index}: only zlib-compressed lazy-load databases are supported")
    blob = index.with_suffix(".rdb").read_bytes()
    novels = {}
    for name, (offset, length) in table["variables"].items():
        serialized = zlib.decompress(blob[offset + 4:offset + length])  # skip the 4-byte length
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns about the bare serialization format
            parsed = rdata.parser.parse_data(serialized, extension=".rds")
        novels[str(name)] = [str(line) for line in rdata.conversion.convert(parsed)]
    return novels


def chapters(novel: str, lines: list[str]) -> list[Document]:
    """Split a novel at its chapter headings; the title page before the first chapter is left out."""
    docs, current = [], None
    for line in lines:
        if CHAPTER.match(line):
            current = []
            docs.append(current)
        if current is not None:
            current.append(line)
    return [Document(f"{novel}/ch{i:02d}", _paragraphs(chapter)) for i, chapter in enumerate(docs, 1)]


def _paragraphs(lines: list[str]) -> str:
    # The source keeps the printed line breaks; rejoin each paragraph into one line.
    text = "\n".join(line.strip() for line in lines)
    return "\n\n".join(" ".join(p.split("\n")) for p in re.split(r"\n{2,}", text.strip()))


def load() -> list[Document]:
    index = find_index()
    if index is None:
        raise CorpusNotAvailable("corpus 'austen' is not prepared; run `amoeba-prepare austen`")
    return [doc for novel, lines in read_novels(index).items() for doc in chapters(novel, lines)]
