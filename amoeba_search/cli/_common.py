"""What every command shares: one-line errors instead of tracebacks, and JSON output."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; turn a user error into ``prog: error: message`` on stderr and exit status 2."""
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
