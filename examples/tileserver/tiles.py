"""A small slippy-map tile pyramid, drawn in code: PNGs written with zlib and struct only.

The "world" is the Mandelbrot set, so zooming in shows new detail the way a map does.
Each 256x256 tile is a 16x16 grid of 16-pixel cells, each cell coloured by the escape
time at its centre: coarse enough to render all 341 tiles of zooms 0-4 in about a second
of pure Python, fine enough to look like a map at every zoom.
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from collections.abc import Iterator

TILE = 256
CELLS = 16
CELL = TILE // CELLS
MAX_ITER = 64
# The part of the complex plane the world square covers.
RE_MIN, IM_MAX, SPAN = -2.25, 1.5, 3.0


def png(width: int, height: int, rows: Iterator[bytes]) -> bytes:
    """An 8-bit RGB PNG (colour type 2) from raw rows of ``width * 3`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 (None) on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _palette() -> list[bytes]:
    colours = []
    for i in range(MAX_ITER):
        t = (i / MAX_ITER) ** 0.5  # most cells escape early: spread those colours out
        r, g, b = colorsys.hsv_to_rgb((0.62 + 1.5 * t) % 1.0, 0.7, 0.3 + 0.7 * t)
        colours.append(bytes((int(r * 255), int(g * 255), int(b * 255))))
    colours.append(b"\x10\x12\x18")  # inside the set
    return colours


PALETTE = _palette()
GRID = b"\x30\x30\x30"


def escape_time(re: float, im: float) -> int:
    zr = zi = 0.0
    for i in range(MAX_ITER):
        zr2, zi2 = zr * zr, zi * zi
        if zr2 + zi2 > 4.0:
            return i
        zi = 2.0 * zr * zi + im
        zr = zr2 - zi2 + re
    return MAX_ITER


def tile_png(z: int, x: int, y: int) -> bytes:
    """The tile at zoom ``z``, column ``x``, row ``y`` (0,0 is the top left)."""
    n = 1 << z
    cell_span = SPAN / (n * CELLS)
    rows: list[bytes] = []
    for cy in range(CELLS):
        im = IM_MAX - ((y * CELLS + cy) + 0.5) * cell_span
        colours = [
            PALETTE[escape_time(RE_MIN + ((x * CELLS + cx) + 0.5) * cell_span, im)]
            for cx in range(CELLS)
        ]
        line = b"".join(c * CELL for c in colours)
        gridded = GRID + line[3:]  # a 1-pixel tile border on the left...
        rows.append(GRID * TILE if cy == 0 else gridded)  # ...and the top
        rows.extend([gridded] * (CELL - 1))
    return png(TILE, TILE, iter(rows))


def pyramid(max_zoom: int = 4) -> Iterator[tuple[int, int, int, bytes]]:
    """Every tile of zooms ``0..max_zoom`` as (z, x, y, png bytes)."""
    for z in range(max_zoom + 1):
        for y in range(1 << z):
            for x in range(1 << z):
                yield z, x, y, tile_png(z, x, y)
