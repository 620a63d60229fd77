from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cloudrec")) as s:
        yield s
