"""A latency-percentile chart as a PNG file, written with the standard library only.

The x axis is the percentile on a logarithmic scale of ``1 / (1 - p)`` (50 %, 90 %, 99 %,
99.9 %, ... equally spaced), the usual way to show a latency distribution's tail; the y axis
is the latency in milliseconds, linear from 0.  Each histogram is one line.  Labels are drawn
with a small built-in bitmap font (digits, ``.``, ``%``, ``ms`` and a few letters), so no
plotting library is needed: the image is RGB rows, filtered with filter type 0 and
zlib-compressed into one IDAT chunk (PNG, ISO/IEC 15948).
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import zlib
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

__all__ = ["percentile_curve", "write_percentile_chart"]

Color = tuple[int, int, int]

#: 3x5 glyphs, rows top to bottom, "#" = ink
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("##.", "..#", ".#.", "#..", "###"),
    "3": ("##.", "..#", ".#.", "..#", "##."),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "##.", "..#", "##."),
    "6": (".##", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "##."),
    ".": ("...", "...", "...", "...", ".#."),
    "%": ("#.#", "..#", ".#.", "#..", "#.#"),
    " ": ("...", "...", "...", "...", "..."),
    "-": ("...", "...", "###", "...", "..."),
    "a": ("...", "##.", ".##", "#.#", "###"),
    "c": ("...", ".##", "#..", "#..", ".##"),
    "e": ("...", "###", "#.#", "##.", ".##"),
    "i": (".#.", "...", ".#.", ".#.", ".#."),
    "l": ("#..", "#..", "#..", "#..", ".##"),
    "m": ("...", "#.#", "###", "#.#", "#.#"),
    "n": ("...", "##.", "#.#", "#.#", "#.#"),
    "o": ("...", ".#.", "#.#", "#.#", ".#."),
    "p": ("...", "##.", "#.#", "##.", "#.."),
    "r": ("...", "#.#", "##.", "#..", "#.."),
    "s": ("...", ".##", ".#.", "..#", "##."),
    "t": (".#.", "###", ".#.", ".#.", ".##"),
    "u": ("...", "#.#", "#.#", "#.#", "###"),
    "y": ("...", "#.#", "###", "..#", "##."),
}
_SCALE = 2
_WHITE: Color = (255, 255, 255)
_GRID: Color = (225, 225, 225)
_AXIS: Color = (60, 60, 60)
#: line colours, in the order of the curves
COLORS: tuple[Color, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(_WHITE * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.dot(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 2) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = x0 + (x1 - x0) * s // steps
            y = y0 + (y1 - y0) * s // steps
            self.rect(x, y, x + width - 1, y + width - 1, color)

    def text(self, x: int, y: int, text: str, color: Color = _AXIS) -> None:
        for ch in text:
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        self.rect(
                            x + col * _SCALE,
                            y + row * _SCALE,
                            x + col * _SCALE + _SCALE - 1,
                            y + row * _SCALE + _SCALE - 1,
                            color,
                        )
            x += 4 * _SCALE

    def png(self) -> bytes:
        raw = bytearray()
        stride = self.width * 3
        for y in range(self.height):
            raw.append(0)  # filter type 0 (None)
            raw += self.pixels[y * stride : (y + 1) * stride]

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
            + chunk(b"IEND", b"")
        )


def _text_width(text: str) -> int:
    return len(text) * 4 * _SCALE


def percentile_curve(histogram: HdrHistogram, nines: int = 5) -> list[tuple[float, float]]:
    """(x, latency in ms) points of a microsecond histogram, x = log10(1 / (1 - p)) from
    p = 0 up to ``nines`` nines (99.999 % for 5), 20 points per decade."""
    if histogram.get_total_count() == 0:
        return []
    points = []
    for step in range(nines * 20 + 1):
        x = step / 20
        p = 100.0 * (1.0 - 10.0**-x)
        points.append((x, histogram.get_value_at_percentile(p) / 1000.0))
    return points


def _nice_step(top: float) -> float:
    raw = top / 5 if top > 0 else 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def write_percentile_chart(
    path: str | os.PathLike[str],
    curves: Sequence[tuple[str, HdrHistogram]],
    *,
    width: int = 800,
    height: int = 480,
) -> None:
    """Write a PNG chart of the latency percentiles of each ``(name, histogram)`` (values in
    microseconds) to ``path``.  Names use the letters of the built-in font (lower case
    ``acei lmnoprstuy``, digits, space, ``-``, ``.``, ``%``); others are drawn as spaces."""
    canvas = _Canvas(width, height)
    left, right, top, bottom = 70, width - 45, 40, height - 50
    data = [(name, percentile_curve(h)) for name, h in curves]
    highest = max((ms for _, pts in data for _, ms in pts), default=1.0) or 1.0
    step = _nice_step(highest * 1.05)
    y_top = step * math.ceil(highest * 1.05 / step)
    x_max = 5.0

    def px(x: float) -> int:
        return left + round((right - left) * x / x_max)

    def py(ms: float) -> int:
        return bottom - round((bottom - top) * ms / y_top)

    # grid and labels
    tick = 0.0
    while tick <= y_top + step / 2:
        y = py(tick)
        canvas.rect(left, y, right, y, _GRID)
        label = _label(tick)
        canvas.text(left - 8 - _text_width(label), y - 5, label)
        tick += step
    for nines, label in enumerate(("0%", "90%", "99%", "99.9%", "99.99%", "99.999%")):
        x = px(float(nines))
        canvas.rect(x, top, x, bottom, _GRID)
        canvas.text(x - _text_width(label) // 2, bottom + 10, label)
    canvas.rect(left, top, left, bottom, _AXIS)
    canvas.rect(left, bottom, right, bottom, _AXIS)
    canvas.text(left - 8 - _text_width("ms"), top - 22, "ms")
    canvas.text((left + right - _text_width("percentile")) // 2, bottom + 30, "percentile")
    # curves and legend
    legend_x = left + 10
    for n, (name, points) in enumerate(data):
        color = COLORS[n % len(COLORS)]
        for (x0, v0), (x1, v1) in itertools.pairwise(points):
            canvas.line(px(x0), py(v0), px(x1), py(v1), color)
        canvas.rect(legend_x, 14, legend_x + 14, 22, color)
        canvas.text(legend_x + 20, 14, name)
        legend_x += 20 + _text_width(name) + 24
    with open(path, "wb") as fp:
        fp.write(canvas.png())
