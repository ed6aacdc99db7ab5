"""Publish a tile map to a RustyOnions node and print the URL that shows it.

    python examples/tileserver/tileserver.py [--node http://127.0.0.1:8080] [--max-zoom 4]

Every tile (zooms 0..4, 341 PNGs drawn in code) is published through the SDK, then a
JSON tile index (``z/x/y`` -> address), then the viewer page with the index's address
written into it. Open the printed URL in a browser: the page loads tiles straight from
the gateway (``/o/<address>``) and pans and zooms with the mouse, the wheel, the +/-
buttons or the keyboard. Everything is immutable and content-addressed: publishing the
same map again yields the same addresses and stores nothing new.

``RON_NODE_URL`` and ``RON_API_KEY`` are honoured (``--node`` wins).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from ron.sdk import Address, AsyncClient, ClientConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiles  # noqa: E402  (the sibling module, importable however this script is run)

CONCURRENCY = 8


async def publish(node: str | None, max_zoom: int) -> dict[str, object]:
    config = ClientConfig.from_env(base_url=node)
    async with AsyncClient(config=config) as ron:
        limit = asyncio.Semaphore(CONCURRENCY)
        index: dict[str, str] = {}

        async def put_tile(z: int, x: int, y: int, png: bytes) -> None:
            async with limit:
                addr = await ron.put(png, tld="png", mime="image/png")
            index[f"{z}/{x}/{y}"] = addr.canonical

        await asyncio.gather(*(put_tile(*tile) for tile in tiles.pyramid(max_zoom)))
        doc = {
            "format": "ron-tiles/1",
            "tile_size": tiles.TILE,
            "min_zoom": 0,
            "max_zoom": max_zoom,
            "tiles": dict(sorted(index.items())),
        }
        index_addr = await ron.put(
            json.dumps(doc, indent=1).encode(), tld="json", mime="application/json"
        )
        page = (HERE / "index.html").read_text().replace("__TILE_INDEX__", index_addr.canonical)
        page_addr: Address = await ron.put(
            page.encode(), tld="html", mime="text/html; charset=utf-8", filename="index.html"
        )
    return {
        "page_url": f"{config.base_url}/o/{page_addr.with_tld}",
        "page": page_addr.with_tld,
        "index": index_addr.canonical,
        "tiles": len(index),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", help="the node's HTTP URL (default: $RON_NODE_URL)")
    parser.add_argument("--max-zoom", type=int, default=4, choices=range(0, 7))
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = asyncio.run(publish(args.node, args.max_zoom))
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        secs = time.monotonic() - started
        print(f"published {result['tiles']} tiles and their index in {secs:.1f} s")
        print(f"open {result['page_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
