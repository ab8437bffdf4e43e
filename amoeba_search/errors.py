"""Errors a user can fix; the CLI turns them into one line on stderr and a non-zero exit."""


class AmoebaError(Exception):
    """Base of user-fixable errors that are not already ``ValueError``/``OSError`` (e.g. a missing package)."""


class MissingDependency(AmoebaError, RuntimeError):
    """An optional package or prepared resource is absent; the message says how to get it."""
