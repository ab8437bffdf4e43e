"""What every command shares: one-line errors instead of tracebacks, and JSON output."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

from amoeba_search.errors import AmoebaError

# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (AmoebaError, ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; turn a user error into ``prog: error: message`` on stderr and exit status 2."""
    quiet_libraries()
    try:
        return body() or 0
    except USER_ERRORS as err:
        if os.environ.get("AMOEBA_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def emit_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def quiet_libraries() -> None:
    """Our own progress bars and messages only: silence transformers' per-load bars and advice."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
