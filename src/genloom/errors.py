"""User-facing errors.

Anything a user can cause (bad data, a wrong path, a bad flag value) raises `GenloomError`; the CLI prints
its message on one line and exits non-zero. Internal invariants use `assert` instead.
"""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for a one-line error that names a library's failure; `default`
    (else the exception's type name) when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else default or type(error).__name__


class GenloomError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class UnencodableTextError(GenloomError):
    """Text the tokenizer cannot encode (a character-level vocabulary lacks one of its characters)."""
