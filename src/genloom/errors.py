"""User-facing errors.

Anything a user can cause (bad data, a wrong path, a bad flag value) raises `GenloomError`; the CLI prints
its message on one line and exits non-zero. Internal invariants use `assert` instead.
"""


class GenloomError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class UnencodableTextError(GenloomError):
    """Text the tokenizer cannot encode (a character-level vocabulary lacks one of its characters)."""
