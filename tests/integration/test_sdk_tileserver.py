"""examples/tileserver: publish the map with one command, then use it in headless Chromium.

The browser is Debian's chromium, installed by the set-up when missing (a one-time cost
outside the test budget). A machine where it cannot be installed fails this test with
the reason; it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.chromium import ChromiumUnavailable, ensure_chromium
from support.node import RunningNode, run_node
from support.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "tileserver" / "tileserver.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> Path:
    try:
        return ensure_chromium()
    except ChromiumUnavailable as exc:
        pytest.fail(f"headless Chromium is required for the tileserver test: {exc}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("tileserver")) as n:
        yield n


def tile_gets(node: RunningNode) -> float:
    return node.metric("requests_total", route="/o/{addr}", method="GET", status="2xx")


def test_tileserver_page_pans_and_zooms_in_headless_chromium(
    chromium: Path, node: RunningNode, tmp_path: Path
) -> None:
    from support.cdp import headless_chromium

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--node", node.http, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "RON_DATA_DIR": str(node.data_dir)},  # finds the owner token
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    print(f"published in {time.monotonic() - started:.1f} s")
    assert published["tiles"] == 1 + 4 + 16 + 64 + 256
    before = tile_gets(node)

    with headless_chromium(tmp_path / "profile") as page:
        page.call("Page.navigate", url=published["page_url"])
        page.wait_for("document.body && document.body.dataset.ready === '1'", what="the index")
        # Zoom 0 in a 1024x768 window: the one world tile.
        page.wait_for("tileMap.counts.loaded >= 1", what="the zoom-0 tile")
        assert page.evaluate("document.getElementById('zoom').textContent") == "0"

        # Two wheel notches towards the middle of the window: zoom 2, a 4x4 grid of tiles.
        for _ in range(2):
            page.mouse("mouseWheel", 512, 384, deltaX=0, deltaY=-120)
        page.wait_for("tileMap.view.z === 2", what="zoom 2")
        page.wait_for(
            "[...tileMap.shown.values()].every(img => img.dataset.loaded === '1')",
            what="every zoom-2 tile to load",
        )
        at_zoom_2 = page.evaluate("tileMap.counts.loaded")
        assert at_zoom_2 >= 1 + 12  # 1024x768 shows at least 4x3 of the 4x4 tiles

        # The + button, then a drag: new tiles come into view and load.
        page.evaluate("document.getElementById('zoom-in').click()")
        page.wait_for("tileMap.view.z === 3", what="zoom 3")
        page.wait_for(
            "[...tileMap.shown.values()].every(img => img.dataset.loaded === '1')",
            what="every zoom-3 tile to load",
        )
        centre = page.evaluate("[tileMap.view.cx, tileMap.view.cy]")
        page.drag((700, 500), (200, 150))
        moved = page.evaluate("[tileMap.view.cx, tileMap.view.cy]")
        assert moved[0] - centre[0] == pytest.approx(500, abs=2)
        assert moved[1] - centre[1] == pytest.approx(350, abs=2)
        page.wait_for(
            "[...tileMap.shown.values()].every(img => img.dataset.loaded === '1')",
            what="the tiles panned into view to load",
        )
        loaded = page.evaluate("tileMap.counts.loaded")
        assert loaded > at_zoom_2 + 12
        assert page.evaluate("tileMap.counts.failed") == 0
        assert page.evaluate("document.getElementById('loaded').textContent") == str(loaded)
        # Every tile on screen is of the current zoom.
        keys = page.evaluate("[...tileMap.shown.keys()]")
        assert keys and all(k.startswith("3/") for k in keys)
        distinct = page.evaluate("tileMap.loadedAddresses.size")
        shot = page.screenshot(tmp_path / "tileserver.png")

    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    # The page, the index and every distinct tile address came through the gateway's
    # /o/{addr} route. (Identical tiles share one address, and a tile scrolled out and
    # back in may come from the browser's cache: they are immutable.)
    wait_until_sync(
        lambda: tile_gets(node) - before >= distinct + 2, 10, "the tile GETs in the metrics"
    )
