from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import LiveServer, make_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(checkpoints: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(checkpoints) as live:
        yield live
