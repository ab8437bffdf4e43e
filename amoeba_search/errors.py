"""Errors a user can fix; the CLI turns them into one line on stderr and a non-zero exit."""


class AmoebaError(Exception):
    """Base of the errors a user can fix; the CLI prints them as one line and exits 2."""


class InputError(AmoebaError, ValueError):
    """Input the user can fix (a flag, a file, a setting, a model); the message says how. A ``ValueError`` too, as
    callers of the library expect; a ``ValueError`` that is not one of these is a bug and keeps its traceback."""


class MissingDependency(AmoebaError, RuntimeError):
    """An optional package or prepared resource is absent; the message says how to get it."""


class UnknownNameError(AmoebaError, KeyError):
    """A name (task, corpus, device, ...) that is not known; the message lists close matches.

    A ``KeyError`` too, for callers that look names up; prints as its message, not as a quoted key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
