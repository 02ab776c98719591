"""Errors the command line reports as one line (exit status 2, no traceback)."""


class UsageError(Exception):
    """A bad flag, a missing file, a refused overwrite: the user can fix it."""
