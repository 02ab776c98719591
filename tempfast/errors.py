"""Errors shared by every floor of tempfast (the library, the robustness suite, the trainer).

* :class:`SettingError` (a ``ValueError``): a setting out of range, named by its argument
  (``eps must lie in [0, 1], got 2``); the command line names the flag instead (``--eps ...``).
* :class:`UsageError`: a missing or unreadable file, a refused overwrite: the user can fix it.
* :class:`OutputError`: a result could not be written after work had started.

The command line prints each as one line (exit status 2, 2 and 1).
"""

from __future__ import annotations


class SettingError(ValueError):
    """``name`` (a Python argument name, e.g. ``n_examples``) ``problem``
    (``must be >= 1, got 0``)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem

    def for_flag(self, flags: dict[str, str] | None = None) -> str:
        """The message with the command-line flag instead of the argument name
        (``--n-examples must be >= 1, got 0``); ``flags`` maps names that differ."""
        flag = (flags or {}).get(self.name, "--" + self.name.replace("_", "-"))
        return f"{flag} {self.problem}"


class UsageError(Exception):
    """A bad flag, a missing file, a refused overwrite: the user can fix it (exit status 2)."""


class OutputError(Exception):
    """A result could not be written (a full disk, a read-only file system) after work had
    started; what was written before is intact and the message says where (exit status 1)."""


def os_reason(exc: OSError) -> str:
    """The cause of an OSError in a few words (``No space left on device``)."""
    return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
