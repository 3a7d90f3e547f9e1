"""Built-in corpora that every installation already has, so training needs no download."""

from __future__ import annotations

from genloom.data.icl import icl_corpus
from genloom.errors import GenloomError


def pydoc_topics() -> list[str]:
    """The Python documentation's topic pages shipped with CPython (`pydoc_data.topics`), ~465k chars."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise GenloomError("this Python has no pydoc_data module; pass --data with your own text") from None
    return [topics[key] for key in sorted(topics)]


BUILTIN_CORPORA = {"pydoc": pydoc_topics, "icl": icl_corpus}


def builtin_corpus(name: str) -> list[str]:
    if name not in BUILTIN_CORPORA:
        raise GenloomError(f"unknown built-in corpus {name!r}; choose from: {', '.join(BUILTIN_CORPORA)}")
    return BUILTIN_CORPORA[name]()
