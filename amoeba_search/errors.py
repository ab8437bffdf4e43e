"""Errors a user can fix; the CLI turns them into one line on stderr and a non-zero exit."""


class AmoebaError(Exception):
    """Base of user-fixable errors that are not already ``ValueError``/``OSError`` (e.g. a missing package)."""


class MissingDependency(AmoebaError, RuntimeError):
    """An optional package or prepared resource is absent; the message says how to get it."""


class UnknownNameError(AmoebaError, KeyError):
    """A name (task, corpus, device, ...) that is not known; the message lists close matches.

    A ``KeyError`` too, for callers that look names up; prints as its message, not as a quoted key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
