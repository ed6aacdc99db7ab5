"""One node for the whole red-team suite (see ``support.redteam`` for its config),
started at the first red-team test and stopped after the last one (package scope)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support.node import RunningNode, run_node
from support.redteam import CONFIG, GOOD_KEY, OBJECT, good_auth


@pytest.fixture(scope="package")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("redteam"), config=CONFIG) as n:
        yield n


@pytest.fixture(scope="package")
def addr(node: RunningNode) -> str:
    """The address of ``OBJECT``, stored before any attack."""
    headers = {"X-Api-Key": GOOD_KEY, **good_auth(node)}
    reply = httpx.post(f"{node.http}/put", content=OBJECT, headers=headers, timeout=30)
    assert reply.status_code == 201, reply.text
    address: str = reply.json()["address"]
    return address
