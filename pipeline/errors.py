"""Errors that map to exit codes.

`InputError` is bad input or configuration: the CLI prints its message as one line on stderr and
exits 2. Anything else is a bug or an environment failure: exit 1 with a traceback.
"""


class InputError(Exception):
    """Bad input data or configuration (exit status 2, one line naming the problem)."""


class ConfigError(InputError):
    """A bad configuration key or value (exit status 2)."""
