"""A latency-percentile chart as a PNG file, written with the standard library only.

The x axis is the percentile on a logarithmic scale of ``1 / (1 - p)`` (50 %, 90 %, 99 %,
99.9 %, ... equally spaced), the usual way to show a latency distribution's tail; it ends at
the highest percentile the sample count supports (99 % for a hundred samples, 99.999 % at
most), so that a short run does not draw its maximum as a long flat tail.  The y axis is the
latency in milliseconds, linear from 0.  Each histogram is one line, named in a legend above
the plot; a title line says what was measured.  Text is drawn with a built-in 5x7 bitmap font
of printable ASCII, so no plotting library is needed: the image is RGB rows, filtered with
filter type 0 and zlib-compressed into one IDAT chunk (PNG, ISO/IEC 15948).
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import zlib
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

__all__ = ["MAX_NINES", "percentile_curve", "supported_nines", "write_percentile_chart"]

Color = tuple[int, int, int]

#: a 5x7 bitmap font of printable ASCII: each line is the character, then its seven rows top to
#: bottom ("#" = ink); a character not listed is drawn as a space
_FONT_ROWS = r"""
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ####. #...# #...# #...# #...# #...# ####.
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
a ..... ..... .###. ....# .#### #...# .####
b #.... #.... #.##. ##..# #...# #...# ####.
c ..... ..... .###. #.... #.... #...# .###.
d ....# ....# .##.# #..## #...# #...# .####
e ..... ..... .###. #...# ##### #.... .###.
f ..##. .#..# .#... ###.. .#... .#... .#...
g ..... .#### #...# #...# .#### ....# .###.
h #.... #.... #.##. ##..# #...# #...# #...#
i ..#.. ..... .##.. ..#.. ..#.. ..#.. .###.
j ...#. ..... ..##. ...#. ...#. #..#. .##..
k #.... #.... #..#. #.#.. ##... #.#.. #..#.
l .##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
m ..... ..... ##.#. #.#.# #.#.# #...# #...#
n ..... ..... #.##. ##..# #...# #...# #...#
o ..... ..... .###. #...# #...# #...# .###.
p ..... ..... ####. #...# ####. #.... #....
q ..... ..... .##.# #..## .#### ....# ....#
r ..... ..... #.##. ##..# #.... #.... #....
s ..... ..... .###. #.... .###. ....# ####.
t .#... .#... ###.. .#... .#... .#..# ..##.
u ..... ..... #...# #...# #...# #..## .##.#
v ..... ..... #...# #...# #...# .#.#. ..#..
w ..... ..... #...# #...# #.#.# #.#.# .#.#.
x ..... ..... #...# .#.#. ..#.. .#.#. #...#
y ..... ..... #...# #...# .#### ....# .###.
z ..... ..... ##### ...#. ..#.. .#... #####
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
. ..... ..... ..... ..... ..... .##.. .##..
, ..... ..... ..... ..... .##.. ..#.. .#...
: ..... .##.. .##.. ..... .##.. .##.. .....
; ..... .##.. .##.. ..... .##.. ..#.. .#...
- ..... ..... ..... ##### ..... ..... .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
_ ..... ..... ..... ..... ..... ..... #####
= ..... ..... ##### ..... ##### ..... .....
% ##... ##..# ...#. ..#.. .#... #..## ...##
/ ..... ....# ...#. ..#.. .#... #.... .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
[ .###. .#... .#... .#... .#... .#... .###.
] .###. ...#. ...#. ...#. ...#. ...#. .###.
@ .###. #...# ....# .##.# #.#.# #.#.# .###.
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
' ..#.. ..#.. .#... ..... ..... ..... .....
" .#.#. .#.#. .#.#. ..... ..... ..... .....
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
? .###. #...# ....# ...#. ..#.. ..... ..#..
* ..... ..#.. #.#.# .###. #.#.# ..#.. .....
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
& .##.. #..#. #.#.. .#... #.#.# #..#. .##.#
$ ..#.. .#### #.#.. .###. ..#.# ####. ..#..
^ ..#.. .#.#. #...# ..... ..... ..... .....
~ ..... ..... .#... #.#.# ...#. ..... .....
| ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
\ ..... #.... .#... ..#.. ...#. ....# .....
{ ...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.
} .#... ..#.. ..#.. ...#. ..#.. ..#.. .#...
` .#... ..#.. ...#. ..... ..... ..... .....
"""
_FONT: dict[str, tuple[str, ...]] = {
    line[0]: tuple(line[2:].split()) for line in _FONT_ROWS.strip("\n").splitlines()
}
_BLANK = (".....",) * 7
#: glyph cell: 5 columns and 1 of spacing, 7 rows, each font pixel drawn as _SCALE x _SCALE
_CELL = 6
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

    def text(self, x: int, y: int, text: str, color: Color = _AXIS, scale: int = _SCALE) -> None:
        """Draw ``text`` with its top-left corner at (x, y)."""
        for ch in text:
            glyph = _FONT.get(ch, _BLANK)
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        self.rect(
                            x + col * scale,
                            y + row * scale,
                            x + col * scale + scale - 1,
                            y + row * scale + scale - 1,
                            color,
                        )
            x += _CELL * scale

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


def _text_width(text: str, scale: int = _SCALE) -> int:
    return len(text) * _CELL * scale - scale


#: the highest percentile drawn, as nines (99.999 %)
MAX_NINES = 5.0


def supported_nines(histograms: Sequence[HdrHistogram]) -> float:
    """How far the x axis runs, in nines: log10 of the largest sample count (the percentile
    ``1 - 1/n`` is the last one ``n`` samples tell apart from the maximum), at least 1 (90 %)
    and at most :data:`MAX_NINES`."""
    count = max((h.get_total_count() for h in histograms), default=0)
    if count < 10:
        return 1.0
    return min(MAX_NINES, math.log10(count))


def percentile_curve(
    histogram: HdrHistogram, nines: float = MAX_NINES
) -> list[tuple[float, float]]:
    """(x, latency in ms) points of a microsecond histogram, x = log10(1 / (1 - p)) from
    p = 0 up to ``nines`` nines (99.999 % for 5), 20 points per decade."""
    if histogram.get_total_count() == 0:
        return []
    points = []
    steps = math.ceil(nines * 20)
    for step in range(steps + 1):
        x = min(nines, step / 20)
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


def _percent(nines: float) -> str:
    """The percentile at ``nines`` nines: ``0%``, ``90%``, ``99.9%``, ``97.5%``."""
    if nines == 0:
        return "0%"
    p = 100.0 * (1.0 - 10.0**-nines)
    text = f"{p:.{max(0, math.ceil(nines) - 1)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def write_percentile_chart(
    path: str | os.PathLike[str],
    curves: Sequence[tuple[str, HdrHistogram]],
    *,
    title: str = "",
    width: int = 1000,
    height: int = 600,
) -> None:
    """Write a PNG chart of the latency percentiles of each ``(name, histogram)`` (values in
    microseconds) to ``path``, with ``title`` above it (one line per line of the text, e.g.
    the operation and the peer, then the count and the date).  Text is printable ASCII; other
    characters are drawn as spaces."""
    canvas = _Canvas(width, height)
    line_height = 7 * _SCALE
    titles = title.splitlines()
    row = 12 + len(titles) * (line_height + 8)  # the line of the y axis's name and the legend
    left, right = 90, width - 60
    top, bottom = row + line_height + 16, height - 40 - 2 * line_height
    nines = supported_nines([h for _, h in curves])
    data = [(name, percentile_curve(h, nines)) for name, h in curves]
    highest = max((ms for _, pts in data for _, ms in pts), default=1.0) or 1.0
    step = _nice_step(highest * 1.05)
    y_top = step * math.ceil(highest * 1.05 / step)

    def px(x: float) -> int:
        return left + round((right - left) * x / nines)

    def py(ms: float) -> int:
        return bottom - round((bottom - top) * ms / y_top)

    for n, text in enumerate(titles):
        canvas.text(10, 12 + n * (line_height + 8), text, _AXIS)
    # the y axis's name above it, on the left; the legend on the same line, from the right
    canvas.text(10, row, "latency (ms)")
    legend_x = right
    for n, (name, _points) in reversed(list(enumerate(data))):
        color = COLORS[n % len(COLORS)]
        legend_x -= _text_width(name)
        canvas.text(legend_x, row, name)
        legend_x -= 8 + 24
        canvas.rect(legend_x, row + 4, legend_x + 24, row + 8, color)
        legend_x -= 24
    # grid and labels
    tick = 0.0
    while tick <= y_top + step / 2:
        y = py(tick)
        canvas.rect(left, y, right, y, _GRID)
        label = _label(tick)
        canvas.text(left - 10 - _text_width(label), y - line_height // 2, label)
        tick += step
    ticks = [float(n) for n in range(int(nines) + 1)]
    if nines - ticks[-1] > 0.25:
        ticks.append(nines)  # the end of the axis, where it is not a whole number of nines
    for x_tick in ticks:
        x = px(x_tick)
        canvas.rect(x, top, x, bottom, _GRID)
        label = _percent(x_tick)
        canvas.text(x - _text_width(label) // 2, bottom + 10, label)
    canvas.rect(left, top, left, bottom, _AXIS)
    canvas.rect(left, bottom, right, bottom, _AXIS)
    name = "percentile (log scale of 1 / (1 - p))"
    canvas.text((left + right - _text_width(name)) // 2, bottom + 16 + line_height, name)
    for n, (_name, points) in enumerate(data):
        color = COLORS[n % len(COLORS)]
        for (x0, v0), (x1, v1) in itertools.pairwise(points):
            canvas.line(px(x0), py(v0), px(x1), py(v1), color)
    with open(path, "wb") as fp:
        fp.write(canvas.png())
