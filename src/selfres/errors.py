"""User-facing errors.

Every error a facility user may see derives from :class:`SelfresError`. Its message
is meant to be printed as it is (no traceback): it names the file or key and says
what is wrong and, where possible, how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class SelfresError(Exception):
    """Base class of errors meant for users (printed without a traceback)."""


class InputError(SelfresError):
    """An input file cannot be used.

    Parameters
    ----------
    path
        The offending file or store.
    what
        What is wrong with it, in plain words.
    sample
        Sample id, when known; prefixed to the message.
    """

    def __init__(self, path: str | Path, what: str, *, sample: str | None = None):
        self.path = str(path)
        self.what = what
        self.sample = sample
        prefix = f"sample {sample!r}: " if sample else ""
        super().__init__(f"{prefix}{self.path}: {what}")

    def for_sample(self, sample: str) -> "InputError":
        """Return the same error with the sample id attached."""
        return InputError(self.path, self.what, sample=sample)


class ConfigError(SelfresError):
    """A configuration value or sample-sheet entry is invalid."""
