"""Fixtures shared by the generation tests."""

from __future__ import annotations

import pytest
from translation_helpers import train_briefly


@pytest.fixture(scope="session", params=["seq2seq", "lstm"])
def translator(request, tmp_path_factory):
    """A briefly trained translation model of each family, its tokenizer and its run dir (trained once a session)."""
    out = tmp_path_factory.mktemp(request.param)
    model, tok = train_briefly(request.param, out)
    return model, tok, out
