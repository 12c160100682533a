"""Chart images for models: windows of bars drawn pixel-exact, fast, without matplotlib.

Vision models see price charts. This module draws a window of ``N`` bars as a small image with a
numba rasteriser (no anti-aliasing, integer pixel geometry, every pixel defined below) and encodes
it as a palette PNG. Charts for *people* are :mod:`aiopt_lib.viz.charts` (mplfinance, Altair).

    spec = RenderSpec(overlays=("ema_20", "bb_upper_20_2", "bb_lower_20_2"))
    bars = with_overlays(load_sample(), spec)                       # adds the overlay columns
    pngs = render_windows(bars, ends, 64, spec, output="png")       # list of PNG bytes
    rgb = render_windows(bars, ends, 64, spec)                      # (n, H, W, 3) uint8

The window of the sample at bar ``t`` is ``bars[t - N + 1 : t + 1]``: an image never shows a bar
after ``t`` (no look-ahead), and the overlays are causal indicators, so removing the bars after
``t`` leaves the image unchanged.

Styles
------
``"candles"`` (default, 224×224 as vision-language models expect): candlesticks on a white
background, up bars teal and down bars red (TradingView's colours), an optional volume pane at the
bottom and optional overlay lines (any column named in ``RenderSpec.overlays``: ``ema_20``,
``sma_50``, ``bb_upper_20_2`` ...), each a 1-pixel polyline in its own colour.

``"jkx"``: the images of Jiang, Kelly & Xiu, "(Re-)Imag(in)ing Price Trends" (Journal of Finance,
2023): black background, white OHLC bars exactly 3 pixels wide (left pixel: the open tick; middle:
the high-low bar; right: the close tick), so the width is ``3 × N`` (20 bars: 60 px wide, 64 px
high, their 20-day images), an optional moving-average line through the middle columns and volume
bars in the bottom fifth. :meth:`RenderSpec.jkx` gives the paper's sizes.

Geometry (exact; :class:`ChartLayout` holds the numbers for one spec and window)
--------------------------------------------------------------------------------
Pixels are addressed ``[row, column]``, row 0 at the top. ``m`` is ``spec.margin`` (candles: 2 by
default; jkx: 0), ``W``/``H`` the image size, ``N`` the number of bars in the window.

* **Rows.** ``volume_rows = floor(H × volume_fraction)`` (0 without volume; computed with a 1e-9
  tolerance so that 64 × 0.2 gives 12, as the paper's ``int(64 / 5)``). The volume pane is rows
  ``[volume_top, volume_bottom] = [H - m - volume_rows, H - 1 - m]``. The price pane is rows
  ``[price_top, price_bottom] = [m, H - 1 - m]`` without volume, and ``[m, volume_top - g - 1]``
  with it, ``g = max(m, 1)`` blank rows separating the panes (jkx 64 px: price rows 0..50, a blank
  row 51, volume rows 52..63, as in the paper).
* **Prices to rows.** Per window, ``lo``/``hi`` are the minimum/maximum of every price drawn: the
  bars' lows and highs (and opens/closes, which lie between them in valid bars) and the non-null
  overlay values in the window. A price ``p`` is drawn on row
  ``price_bottom - floor((p - lo) / (hi - lo) * (price_bottom - price_top) + 0.5)`` (rounding half
  up, in float64, in this order of operations), so ``hi`` is on ``price_top`` and ``lo`` on
  ``price_bottom``. A window with a constant price (``hi == lo``) draws every price on the middle
  row ``(price_top + price_bottom) // 2`` instead of dividing by zero.
* **Columns, candles.** The plot is columns ``[m, W - 1 - m]``, ``P = W - 2m`` wide; every bar gets
  ``slot = P // N`` columns (at least 1, else :class:`~aiopt_lib.core.errors.ConfigError`), the bars are
  centred: bar ``i`` (0 = oldest) starts at ``left_i = m + (P - slot × N) // 2 + i × slot``. Its body
  is ``body = max(1, slot - max(1, slot // 4))`` columns ``[left_i, left_i + body - 1]`` (slot 1:
  one column and no gap), the rest of the slot is blank; its wick is the column
  ``left_i + (body - 1) // 2`` (the body's centre, the left one of two for an even body).
* **Columns, jkx.** ``left_i = 3i``: the open tick is the pixel ``[row(open), 3i]``, the high-low
  bar the column ``3i + 1`` from ``row(high)`` to ``row(low)``, the close tick ``[row(close), 3i + 2]``.
* **Candles.** A bar is *up* when ``close >= open``: a doji (``close == open``) is up, drawn as a
  one-row body. Wick: rows ``row(high)..row(low)`` in the wick column; body: rows
  ``row(max(open, close))..row(min(open, close))`` in the body columns; both in the bar's colour
  (``up_colour`` / ``down_colour``). jkx bars use the same colours (both white by default).
* **Volume.** ``vmax`` is the window's largest volume (nulls and negative volumes count as 0). Bar
  ``i`` of volume ``v`` fills ``floor(v / vmax × volume_rows + 0.5)`` rows upwards from
  ``volume_bottom``, in the body columns (candles) or the middle column (jkx), in the bar's colour;
  nothing when ``vmax`` is 0.
* **Overlays.** Drawn after the bars, in ``spec.overlays`` order (a later one covers an earlier
  one). Each point is the bar's centre column (the wick / the jkx middle column) at the value's row;
  consecutive non-null points are joined by a Bresenham line including both ends (integer error
  terms, ``err = dx - dy``; step x when ``2·err >= -dy``, step y when ``2·err <= dx``). A null (or
  NaN) value leaves a gap: a point with null neighbours on both sides is a single pixel.

Images are palette images: index 0 is the background, 1 the up colour, 2 the down colour, ``3 + k``
the colour of overlay ``k`` (:meth:`RenderSpec.palette`). The PNG is written here (colour type 3,
the smallest bit depth of 1, 2, 4, 8 that holds the palette, filter 0 on every row, zlib level 1),
so the same window gives the same bytes every time, whichever process renders it (with the same
zlib library; the pixels are the same everywhere).

Differences from the paper's code (which draws with PIL): rows round half up where it rounds half
to even (``np.around``), which moves a price that falls exactly between two rows by one row.

Speed: drawing is compiled (numba, ``cache=True``, ~5-8 µs per 224×224 image) and PNG encoding
dominates (zlib, ~30-60 µs); ``render_windows`` draws a chunk of windows into a buffer it reuses,
packs and encodes them, in worker processes across all cores. On the 2-core CI machine
(``benchmarks/bench_charts.py``, 64-bar windows at 224×224 with volume): ~21,000 PNG/s on one
core, ~33,000/s on two; mplfinance draws ~20/s.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import re
import struct
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import polars as pl

from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features.registry import (
    INDICATOR_KINDS,
    IndicatorParams,
    IndicatorRequest,
    compute_frame,
    overlay_outputs,
    parse_column,
)

__all__ = [
    "DEFAULT_OVERLAY_COLOURS",
    "JKX_HEIGHTS",
    "STYLES",
    "ChartLayout",
    "Colour",
    "PaletteImage",
    "RenderSpec",
    "chart_layout",
    "encode_png",
    "palette_image",
    "render_window",
    "render_windows",
    "with_overlays",
]

Colour = tuple[int, int, int]
STYLES: tuple[str, ...] = ("candles", "jkx")

WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
TV_UP: Colour = (38, 166, 154)  # TradingView's default up candle
TV_DOWN: Colour = (239, 83, 80)  # TradingView's default down candle
DEFAULT_OVERLAY_COLOURS: tuple[Colour, ...] = (
    (41, 98, 255),  # blue
    (255, 152, 0),  # orange
    (156, 39, 176),  # purple
    (33, 33, 33),  # near black
    (0, 151, 167),  # cyan
    (233, 30, 99),  # pink
    (121, 85, 72),  # brown
    (130, 119, 23),  # olive
)
# The heights of the paper's images by window length (bars): 5 -> 32, 20 -> 64, 60 -> 96.
JKX_HEIGHTS: dict[int, int] = {5: 32, 20: 64, 60: 96}

_BAR_COLUMNS = ("open", "high", "low", "close")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_LEVEL = 1  # zlib level: level 1 is ~5x faster than 6 and these images compress well anyway
_DEFAULT_CHUNK = 256  # windows drawn per buffer; bigger chunks stop paying back beyond this
_MIN_CHUNK = 128  # ~10 ms of drawing and encoding: about what starting a worker costs
_CHUNK_BYTES = 16 << 20  # at most this many index bytes per chunk (256 images of 224x224: 12.8 MB)

# ---------------------------------------------------------------------------------------------
# The spec


def _colour(name: str, value: Any) -> Colour:
    """A colour as an (r, g, b) tuple of ints 0..255, from a tuple/list or ``"#rrggbb"``."""
    if isinstance(value, str):
        match = re.fullmatch(r"#?([0-9a-fA-F]{6})", value.strip())
        if not match:
            raise ConfigError(f"{name}: a colour is '#rrggbb' or (r, g, b), got {value!r}")
        text = match.group(1)
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    if isinstance(value, tuple | list) and len(value) == 3:
        parts = tuple(value)
        if all(
            isinstance(p, int | np.integer) and not isinstance(p, bool) and 0 <= p <= 255
            for p in parts
        ):
            return (int(parts[0]), int(parts[1]), int(parts[2]))
    raise ConfigError(f"{name}: a colour is '#rrggbb' or (r, g, b) with ints 0..255, got {value!r}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class RenderSpec:
    """How a window of bars becomes an image. Validated on construction (:class:`ConfigError`).

    * ``width``, ``height``: the image size in pixels (jkx: ``width`` is ``3 × window``, so a
      multiple of 3; the window is checked when rendering).
    * ``style``: ``"candles"`` or ``"jkx"`` (see the module docstring for the exact geometry).
    * ``volume``: draw the volume pane, the bottom ``volume_fraction`` of the image (``0 < f < 1``).
    * ``overlays``: columns drawn as lines on the price pane, e.g. ``("ema_20", "bb_upper_20_2")``
      (:func:`with_overlays` adds indicator columns by name). Their values take part in the
      window's price scale.
    * ``margin``: blank pixels around the plot (candles: all four sides, default 2). The jkx
      layout fills the frame as in the paper: its margin is 0.
    * ``background``, ``up_colour``, ``down_colour``: ``(r, g, b)`` or ``"#rrggbb"``. Defaults:
      candles white / teal / red; jkx black / white / white.
    * ``overlay_colours``: one colour per overlay, in order (default
      :data:`DEFAULT_OVERLAY_COLOURS` for candles, the foreground white for jkx).

    ``None`` fields are replaced by the style's defaults, so two specs that draw the same images
    compare equal.
    """

    width: int = 224
    height: int = 224
    style: Literal["candles", "jkx"] = "candles"
    volume: bool = True
    overlays: tuple[str, ...] = ()
    volume_fraction: float = 0.2
    margin: int | None = None
    background: Colour | str | None = None
    up_colour: Colour | str | None = None
    down_colour: Colour | str | None = None
    overlay_colours: tuple[Colour | str, ...] | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        jkx = self.style == "jkx"
        put("width", _positive_int("width", self.width))
        put("height", _positive_int("height", self.height))
        if not isinstance(self.volume, bool | np.bool_):
            raise ConfigError(f"volume must be True or False, got {self.volume!r}")
        put("volume", bool(self.volume))
        fraction = self.volume_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating):
            raise ConfigError(f"volume_fraction must be a number, got {fraction!r}")
        if not 0.0 < float(fraction) < 1.0:
            raise ConfigError(f"volume_fraction must be between 0 and 1, got {fraction}")
        put("volume_fraction", float(fraction))
        margin = (0 if jkx else 2) if self.margin is None else self.margin
        put("margin", _positive_int("margin", margin, minimum=0))
        if jkx and self.margin != 0:
            raise ConfigError(
                f"the jkx layout has no margin (its bars fill the width, 3 px each), got {self.margin}"
            )
        overlays = self.overlays
        if isinstance(overlays, str):
            overlays = (overlays,)
        if not isinstance(overlays, tuple | list) or not all(
            isinstance(o, str) and o for o in overlays
        ):
            raise ConfigError(f"overlays must be a tuple of column names, got {self.overlays!r}")
        overlays = tuple(overlays)
        if len(set(overlays)) != len(overlays):
            raise ConfigError(f"overlays are named twice: {overlays}")
        clashes = [o for o in overlays if o in (*_BAR_COLUMNS, "volume", "ts")]
        if clashes:
            raise ConfigError(f"overlays must be indicator columns, not bar columns: {clashes}")
        if len(overlays) > 253:
            raise ConfigError(f"at most 253 overlays fit a 256-colour palette, got {len(overlays)}")
        put("overlays", overlays)
        foreground = WHITE if jkx else None
        put("background", _colour("background", self.background or (BLACK if jkx else WHITE)))
        put("up_colour", _colour("up_colour", self.up_colour or foreground or TV_UP))
        put("down_colour", _colour("down_colour", self.down_colour or foreground or TV_DOWN))
        colours = self.overlay_colours
        if colours is None:
            colours = (WHITE,) * len(overlays) if jkx else DEFAULT_OVERLAY_COLOURS[: len(overlays)]
        if isinstance(colours, str) or not isinstance(colours, tuple | list):
            raise ConfigError(f"overlay_colours must be a tuple of colours, got {colours!r}")
        colours = tuple(_colour(f"overlay_colours[{i}]", c) for i, c in enumerate(colours))
        if len(colours) < len(overlays):
            raise ConfigError(
                f"{len(overlays)} overlays need {len(overlays)} overlay_colours, got {len(colours)}"
                + (
                    f" (the defaults cover {len(DEFAULT_OVERLAY_COLOURS)})"
                    if self.overlay_colours is None
                    else ""
                )
            )
        put("overlay_colours", colours[: len(overlays)])
        if jkx and self.width % 3:
            raise ConfigError(
                f"a jkx image is 3 px per bar: width must be 3 × window, got {self.width}"
            )
        if self.width - 2 * self.margin < 1:
            raise ConfigError(f"margin {self.margin} leaves no columns in width {self.width}")
        rows = _rows(self)
        if rows.price_bottom - rows.price_top < 1:
            raise ConfigError(
                f"height {self.height} leaves {rows.price_bottom - rows.price_top + 1} price row(s) "
                f"(margin {self.margin}, volume rows {rows.volume_rows}); at least 2 are needed"
            )
        if self.volume and rows.volume_rows < 1:
            raise ConfigError(
                f"volume_fraction {self.volume_fraction} of height {self.height} is less than a row"
            )

    @classmethod
    def jkx(
        cls,
        window: int,
        *,
        height: int | None = None,
        volume: bool = True,
        overlays: Sequence[str] = (),
    ) -> RenderSpec:
        """The Jiang-Kelly-Xiu image for ``window`` bars: ``3 × window`` wide, the paper's height
        (:data:`JKX_HEIGHTS`: 5 bars 32 px, 20 bars 64 px, 60 bars 96 px; ``height`` for others),
        volume in the bottom fifth, e.g. ``overlays=("sma_20",)`` for its moving-average line."""
        window = _positive_int("window", window)
        if height is None:
            if window not in JKX_HEIGHTS:
                raise ConfigError(
                    f"the paper has no image height for {window} bars (it has {sorted(JKX_HEIGHTS)}): "
                    "pass height="
                )
            height = JKX_HEIGHTS[window]
        return cls(
            width=3 * window, height=height, style="jkx", volume=volume, overlays=tuple(overlays)
        )

    def palette(self) -> np.ndarray:
        """The (K, 3) uint8 palette: background, up, down, then one colour per overlay."""
        colours = [self.background, self.up_colour, self.down_colour, *(self.overlay_colours or ())]
        return np.array(colours, dtype=np.uint8).reshape(-1, 3)

    def layout(self, window: int) -> ChartLayout:
        """The pixel geometry of a window of ``window`` bars (:func:`chart_layout`)."""
        return chart_layout(self, window)


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Rows:
    price_top: int
    price_bottom: int
    volume_top: int
    volume_bottom: int
    volume_rows: int


def _rows(spec: RenderSpec) -> _Rows:
    margin = int(spec.margin or 0)
    height = spec.height
    # the tolerance makes 64 x 0.2 = 12.8 -> 12 and 15 x 0.2 = 3.0000000000000004 -> 3 alike
    volume_rows = math.floor(height * spec.volume_fraction + 1e-9) if spec.volume else 0
    volume_bottom = height - 1 - margin
    volume_top = volume_bottom - volume_rows + 1
    price_bottom = volume_top - max(margin, 1) - 1 if spec.volume else height - 1 - margin
    return _Rows(margin, price_bottom, volume_top, volume_bottom, volume_rows)


@dataclass(frozen=True)
class ChartLayout:
    """The integer geometry of one spec and window length (see the module docstring).

    Bar ``i`` (0 = the oldest bar of the window) starts at column ``left(i) = first_column +
    i × slot``; candles: its body is ``body_width`` columns from there and its wick the column
    ``left(i) + centre_offset``; jkx: open tick ``left(i)``, high-low bar ``left(i) + 1``, close
    tick ``left(i) + 2``. Prices are drawn on rows ``price_top..price_bottom``
    (:meth:`price_row`), volume on rows ``volume_top..volume_bottom`` (``volume_rows`` of them; 0
    without volume).
    """

    style: str
    width: int
    height: int
    window: int
    first_column: int
    slot: int
    body_width: int
    centre_offset: int
    price_top: int
    price_bottom: int
    volume_top: int
    volume_bottom: int
    volume_rows: int

    def left(self, i: int) -> int:
        """The first column of bar ``i``."""
        return self.first_column + i * self.slot

    def centre_column(self, i: int) -> int:
        """The column of bar ``i``'s wick (candles) or high-low bar (jkx); overlays pass here."""
        return self.left(i) + self.centre_offset

    def price_row(self, price: float, lo: float, hi: float) -> int:
        """The row of ``price`` in a window whose prices span ``[lo, hi]``."""
        if hi > lo:
            fraction = (price - lo) / (hi - lo) * (self.price_bottom - self.price_top)
            return self.price_bottom - math.floor(fraction + 0.5)
        return (self.price_top + self.price_bottom) // 2


def chart_layout(spec: RenderSpec, window: int) -> ChartLayout:
    """The pixel geometry of ``window`` bars drawn with ``spec``; :class:`ConfigError` when they
    do not fit (a jkx width other than ``3 × window``, fewer than one column per candle)."""
    window = _positive_int("window", window)
    rows = _rows(spec)
    margin = int(spec.margin or 0)
    if spec.style == "jkx":
        if spec.width != 3 * window:
            raise ConfigError(
                f"a jkx image of {window} bars is {3 * window} px wide (3 px per bar), "
                f"but the spec's width is {spec.width}"
            )
        first, slot, body, centre = 0, 3, 3, 1
    else:
        plot = spec.width - 2 * margin
        slot = plot // window
        if slot < 1:
            raise ConfigError(
                f"{window} bars do not fit {plot} px of plot width (width {spec.width}, "
                f"margin {margin}): at least one column per bar is needed"
            )
        first = margin + (plot - slot * window) // 2
        body = max(1, slot - max(1, slot // 4))
        centre = (body - 1) // 2
    return ChartLayout(
        style=spec.style,
        width=spec.width,
        height=spec.height,
        window=window,
        first_column=first,
        slot=slot,
        body_width=body,
        centre_offset=centre,
        price_top=rows.price_top,
        price_bottom=rows.price_bottom,
        volume_top=rows.volume_top,
        volume_bottom=rows.volume_bottom,
        volume_rows=rows.volume_rows,
    )


# Positions in the int64 geometry vector the kernels take (one array instead of a dozen arguments).
_G_STYLE, _G_FIRST, _G_SLOT, _G_BODY, _G_CENTRE = 0, 1, 2, 3, 4
_G_PTOP, _G_PBOTTOM, _G_VROWS, _G_VBOTTOM = 5, 6, 7, 8


def _geometry_vector(layout: ChartLayout) -> np.ndarray:
    values = [0] * 9
    values[_G_STYLE] = 1 if layout.style == "jkx" else 0
    values[_G_FIRST] = layout.first_column
    values[_G_SLOT] = layout.slot
    values[_G_BODY] = layout.body_width
    values[_G_CENTRE] = layout.centre_offset
    values[_G_PTOP] = layout.price_top
    values[_G_PBOTTOM] = layout.price_bottom
    values[_G_VROWS] = layout.volume_rows
    values[_G_VBOTTOM] = layout.volume_bottom
    return np.array(values, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# numba kernels: draw palette indices into a zeroed-per-image uint8 buffer


_jit = numba.njit(cache=True, nogil=True)


@_jit
def _price_row(price, lo, span, top, bottom):
    """The documented price -> row mapping (float64, round half up, clamped for safety)."""
    if span > 0.0:
        row = bottom - math.floor((price - lo) / span * (bottom - top) + 0.5)
    else:
        row = (top + bottom) // 2
    return min(max(row, top), bottom)


@_jit
def _line(img, x0, y0, x1, y1, colour):
    """Bresenham's line from (x0, y0) to (x1, y1), both ends included (x = column, y = row)."""
    dx = abs(x1 - x0)
    dy = abs(y1 - y0)
    sx = 1 if x0 < x1 else -1
    sy = 1 if y0 < y1 else -1
    err = dx - dy
    while True:
        img[y0, x0] = colour
        if x0 == x1 and y0 == y1:
            break
        e2 = 2 * err
        if e2 >= -dy:
            err -= dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


@_jit
def _draw_window(o, h, lo_, c, v, ov, start, n, geo, img):
    """Draw bars start..start+n-1 into img (H, W) as palette indices (see the module docstring)."""
    img[:, :] = 0
    jkx = geo[_G_STYLE] == 1
    first = geo[_G_FIRST]
    slot = geo[_G_SLOT]
    body = geo[_G_BODY]
    centre = geo[_G_CENTRE]
    top = geo[_G_PTOP]
    bottom = geo[_G_PBOTTOM]
    volume_rows = geo[_G_VROWS]
    volume_bottom = geo[_G_VBOTTOM]
    stop = start + n

    lo = np.inf
    hi = -np.inf
    for i in range(start, stop):
        lo = min(lo, lo_[i], h[i], o[i], c[i])
        hi = max(hi, lo_[i], h[i], o[i], c[i])
    for k in range(ov.shape[0]):
        for i in range(start, stop):
            x = ov[k, i]
            if x == x:  # not NaN (null)
                lo = min(lo, x)
                hi = max(hi, x)
    span = hi - lo

    vmax = 0.0
    if volume_rows > 0:
        for i in range(start, stop):
            if v[i] > vmax:  # NaN and negative volumes never win
                vmax = v[i]

    for j in range(n):
        i = start + j
        left = first + j * slot
        colour = 1 if c[i] >= o[i] else 2
        row_open = _price_row(o[i], lo, span, top, bottom)
        row_close = _price_row(c[i], lo, span, top, bottom)
        row_high = _price_row(h[i], lo, span, top, bottom)
        row_low = _price_row(lo_[i], lo, span, top, bottom)
        hl_top = min(row_high, row_low)
        hl_bottom = max(row_high, row_low)
        if jkx:
            img[row_open, left] = colour
            for r in range(hl_top, hl_bottom + 1):
                img[r, left + 1] = colour
            img[row_close, left + 2] = colour
            volume_left = left + 1
            volume_width = 1
        else:
            wick = left + centre
            for r in range(hl_top, hl_bottom + 1):
                img[r, wick] = colour
            for r in range(min(row_open, row_close), max(row_open, row_close) + 1):
                for x in range(left, left + body):
                    img[r, x] = colour
            volume_left = left
            volume_width = body
        if vmax > 0.0 and v[i] > 0.0:
            bar_rows = math.floor(v[i] / vmax * volume_rows + 0.5)
            for r in range(volume_bottom - bar_rows + 1, volume_bottom + 1):
                for x in range(volume_left, volume_left + volume_width):
                    img[r, x] = colour

    for k in range(ov.shape[0]):
        colour = 3 + k
        have_previous = False
        previous_x = 0
        previous_row = 0
        for j in range(n):
            value = ov[k, start + j]
            if value != value:
                have_previous = False
                continue
            x = first + j * slot + centre
            row = _price_row(value, lo, span, top, bottom)
            if have_previous:
                _line(img, previous_x, previous_row, x, row, colour)
            else:
                img[row, x] = colour
            have_previous = True
            previous_x = x
            previous_row = row


@_jit
def _draw_batch(o, h, lo_, c, v, ov, ends, window, geo, out):
    """Draw the window ending at each of ``ends`` into ``out[b]`` (B, H, W)."""
    for b in range(ends.shape[0]):
        _draw_window(o, h, lo_, c, v, ov, ends[b] - window + 1, window, geo, out[b])


@_jit
def _pack_rows(indices, bits, out):
    """PNG scanlines of palette indices (B, H, W) at ``bits`` per pixel into out (B, H, 1 + bytes):
    a filter byte 0, then the pixels packed most significant bits first (the PNG order), the last
    byte of a row padded with zero bits. One loop per depth: the compiler unrolls each."""
    per_byte = 8 // bits
    width = indices.shape[2]
    full = width // per_byte
    row_bytes = out.shape[2] - 1
    for b in range(indices.shape[0]):
        for r in range(indices.shape[1]):
            src = indices[b, r]
            dst = out[b, r]
            dst[0] = 0
            if bits == 8:
                for k in range(width):
                    dst[1 + k] = src[k]
            elif bits == 4:
                for k in range(full):
                    dst[1 + k] = (src[2 * k] << 4) | src[2 * k + 1]
            elif bits == 2:
                for k in range(full):
                    dst[1 + k] = (
                        (src[4 * k] << 6)
                        | (src[4 * k + 1] << 4)
                        | (src[4 * k + 2] << 2)
                        | src[4 * k + 3]
                    )
            else:
                for k in range(full):
                    acc = 0
                    for p in range(8):
                        acc = (acc << 1) | src[8 * k + p]
                    dst[1 + k] = acc
            if full < row_bytes:
                acc = 0
                for p in range(per_byte):
                    x = full * per_byte + p
                    acc = (acc << bits) | (src[x] if x < width else 0)
                dst[row_bytes] = acc


@_jit
def _expand_palette(indices, palette, out):
    """RGB images (B, H, W, 3) from palette indices (B, H, W): ``out[...] = palette[indices]``,
    ten times faster than numpy's fancy indexing."""
    for b in range(indices.shape[0]):
        for r in range(indices.shape[1]):
            for x in range(indices.shape[2]):
                k = indices[b, r, x]
                out[b, r, x, 0] = palette[k, 0]
                out[b, r, x, 1] = palette[k, 1]
                out[b, r, x, 2] = palette[k, 2]


# ---------------------------------------------------------------------------------------------
# PNG


def _chunk(tag: bytes, data: bytes | memoryview) -> bytes:
    return b"".join(
        (
            struct.pack(">I", len(data)),
            tag,
            data,
            struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)) & 0xFFFFFFFF),
        )
    )


_IEND = _chunk(b"IEND", b"")


def _bit_depth(colours: int) -> int:
    for bits in (1, 2, 4, 8):
        if colours <= 1 << bits:
            return bits
    raise ValueError(f"a palette holds at most 256 colours, got {colours}")


def _png_header(width: int, height: int, bits: int, colour_type: int, palette: np.ndarray | None):
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    if palette is not None:
        parts.append(_chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes()))
    return b"".join(parts)


def _png(header: bytes, scanlines: np.ndarray, level: int) -> bytes:
    """Header + IDAT(zlib of the filtered scanlines) + IEND."""
    return b"".join((header, _chunk(b"IDAT", zlib.compress(scanlines, level)), _IEND))


def _packed_buffer(count: int, height: int, width: int, bits: int, name: str) -> np.ndarray:
    row_bytes = (width * bits + 7) // 8
    return _buffer(name, (count, height, 1 + row_bytes))


def encode_png(
    image: np.ndarray, palette: np.ndarray | Sequence[Colour] | None = None, *, level: int = 1
) -> bytes:
    """Encode an image as PNG bytes (written here: no Pillow or matplotlib needed).

    * ``image`` (H, W) uint8 palette indices with ``palette`` (K, 3) uint8, K <= 256: an indexed
      PNG (colour type 3) at the smallest bit depth of 1, 2, 4, 8 that holds K colours.
    * ``image`` (H, W) uint8 without a palette: 8-bit greyscale (colour type 0).
    * ``image`` (H, W, 3) uint8 RGB (no palette): 8-bit truecolour (colour type 2).

    Every scanline uses filter 0 (none); ``level`` is the zlib level (0-9, default 1: fast).
    The same input gives the same bytes.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {array.dtype}")
    if not 0 <= int(level) <= 9:
        raise ValueError(f"level must be 0..9, got {level}")
    if array.ndim == 3:
        if array.shape[2] != 3 or palette is not None:
            raise ValueError("an (H, W, 3) image is RGB and takes no palette")
        height, width = array.shape[:2]
        rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)
        rows[:, 1:] = array.reshape(height, 3 * width)
        header = _png_header(width, height, 8, 2, None)
        return _png(header, rows, int(level))
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {array.shape}")
    height, width = array.shape
    if height < 1 or width < 1:
        raise ValueError(f"image must not be empty, got shape {array.shape}")
    if palette is None:
        rows = np.zeros((height, 1 + width), dtype=np.uint8)
        rows[:, 1:] = array
        return _png(_png_header(width, height, 8, 0, None), rows, int(level))
    colours = np.asarray(palette, dtype=np.int64)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
        raise ValueError(f"palette must be (K, 3) with 1 <= K <= 256, got shape {colours.shape}")
    if colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette entries must be 0..255")
    if int(array.max()) >= colours.shape[0]:
        raise ValueError(
            f"image has index {int(array.max())} but the palette has {colours.shape[0]} colours"
        )
    bits = _bit_depth(colours.shape[0])
    packed = np.empty((1, height, 1 + (width * bits + 7) // 8), dtype=np.uint8)
    _pack_rows(np.ascontiguousarray(array)[None], bits, packed)
    header = _png_header(width, height, bits, 3, colours.astype(np.uint8))
    return _png(header, packed[0], int(level))


# ---------------------------------------------------------------------------------------------
# Inputs

_DEFAULT_SPEC = RenderSpec()


def _check_spec(spec: RenderSpec | None) -> RenderSpec:
    """The spec, ``None`` meaning the default one."""
    if spec is None:
        return _DEFAULT_SPEC
    if not isinstance(spec, RenderSpec):
        raise TypeError(f"spec must be a RenderSpec, got {type(spec).__name__}")
    return spec


_LOCAL = threading.local()


def _buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 scratch buffer of at least ``shape`` reused by this thread (in a worker process:
    by the whole worker), viewed to ``shape``."""
    store = getattr(_LOCAL, "buffers", None)
    if store is None:
        store = _LOCAL.buffers = {}
    size = math.prod(shape)
    flat = store.get(name)
    if flat is None or flat.size < size:
        flat = store[name] = np.empty(size, dtype=np.uint8)
    return flat[:size].reshape(shape)


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs: the bars' arrays, the ends, and how to draw and encode."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    overlays: np.ndarray  # (K, n) float64, NaN where null
    ends: np.ndarray  # int64
    window: int
    geometry: np.ndarray
    width: int
    height: int
    bits: int
    png_header: bytes
    palette: np.ndarray  # (K, 3) uint8
    output: str
    level: int = _PNG_LEVEL


def _float_column(
    frame: pl.DataFrame, name: str, *, finite: bool, row_offset: int = 0
) -> np.ndarray:
    """A column as float64 (null -> NaN); ``DataError`` at the first non-finite value (or
    infinity, when NaN is allowed), its row counted from ``row_offset``."""
    if name not in frame.columns:
        raise DataError(
            f"missing column {name!r} (columns: {', '.join(frame.columns)})", field=name
        )
    column = frame.get_column(name)
    if not column.dtype.is_numeric():
        raise DataError(f"column {name!r} has dtype {column.dtype}, expected a number", field=name)
    values = np.ascontiguousarray(column.cast(pl.Float64).to_numpy(), dtype=np.float64)
    bad = ~np.isfinite(values) if finite else np.isinf(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a finite price" if finite else "a finite value or null"
        raise DataError(
            f"column {name!r} must hold {what}",
            row=row + row_offset,
            row_kind="row",
            field=name,
            value=column[row],
        )
    return values


def _arrays(frame: pl.DataFrame, spec: RenderSpec, row_offset: int = 0) -> tuple[np.ndarray, ...]:
    """open, high, low, close, volume and the (K, n) overlays of ``frame`` as float64."""
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"bars must be a polars DataFrame, got {type(frame).__name__}")
    missing = [o for o in spec.overlays if o not in frame.columns]
    if missing:
        raise ConfigError(
            f"overlay column(s) {missing} are not in the frame; add them with "
            "aiopt_lib.features.render.with_overlays(bars, spec)"
        )
    o, h, lo, c = (
        _float_column(frame, name, finite=True, row_offset=row_offset) for name in _BAR_COLUMNS
    )
    if spec.volume:
        v = np.nan_to_num(
            _float_column(frame, "volume", finite=False, row_offset=row_offset), nan=0.0
        )
    else:
        v = np.zeros(frame.height, dtype=np.float64)
    overlays = np.empty((len(spec.overlays), frame.height), dtype=np.float64)
    for k, name in enumerate(spec.overlays):
        overlays[k] = _float_column(frame, name, finite=False, row_offset=row_offset)
    return o, h, lo, c, v, overlays


def _check_ends(ends: Sequence[int] | np.ndarray, window: int, size: int) -> np.ndarray:
    array = np.asarray(ends)
    if array.ndim != 1:
        raise ValueError(f"ends must be a 1-D sequence of bar indices, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ends must be integer bar indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    short = np.flatnonzero(array < window - 1)
    if short.size:
        end = int(array[short[0]])
        raise ValueError(
            f"end {end} (position {int(short[0])} of ends) has {max(end + 1, 0)} bar(s) up to it; "
            f"a window of {window} needs {window}"
        )
    beyond = np.flatnonzero(array >= size)
    if beyond.size:
        raise ValueError(
            f"end {int(array[beyond[0]])} (position {int(beyond[0])} of ends) is past the last "
            f"bar ({size - 1})"
        )
    return array


def _make_job(
    bars: pl.DataFrame,
    ends: np.ndarray,
    window: int,
    spec: RenderSpec,
    output: str,
    row_offset: int = 0,
) -> _Job:
    layout = chart_layout(spec, window)
    palette = spec.palette()
    bits = _bit_depth(palette.shape[0])
    o, h, lo, c, v, overlays = _arrays(bars, spec, row_offset)
    return _Job(
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=v,
        overlays=overlays,
        ends=ends,
        window=window,
        geometry=_geometry_vector(layout),
        width=spec.width,
        height=spec.height,
        bits=bits,
        png_header=_png_header(spec.width, spec.height, bits, 3, palette),
        palette=palette,
        output=output,
    )


def _draw_indices(job: _Job, start: int, stop: int) -> np.ndarray:
    """Palette indices (stop - start, H, W) of ends[start:stop], in this thread's buffer."""
    indices = _buffer("indices", (stop - start, job.height, job.width))
    _draw_batch(
        job.open,
        job.high,
        job.low,
        job.close,
        job.volume,
        job.overlays,
        job.ends[start:stop],
        job.window,
        job.geometry,
        indices,
    )
    return indices


def _render_chunk(
    job: _Job, start: int, stop: int, rgb: np.ndarray | None = None
) -> list[bytes] | np.ndarray | None:
    """PNG bytes (output "png"), or for output "indices" a copy of the palette indices, or
    nothing when ``rgb`` (n, H, W, 3) is given: the RGB images are written to ``rgb[start:stop]``."""
    indices = _draw_indices(job, start, stop)
    if job.output == "indices":
        if rgb is not None:
            _expand_palette(indices, job.palette, rgb[start:stop])
            return None
        return indices.copy()
    packed = _packed_buffer(stop - start, job.height, job.width, job.bits, "scanlines")
    _pack_rows(indices, job.bits, packed)
    return [_png(job.png_header, packed[b], job.level) for b in range(stop - start)]


# Worker processes: the job arrives once per worker (inherited on fork, pickled on spawn); each
# task is a (start, stop) range of ends.
_WORKER_JOB: _Job | None = None
_WARMED: set[str] = set()  # the outputs whose kernels this process has run (so forks inherit them)


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_chunk(bounds: tuple[int, int]) -> list[bytes] | np.ndarray | None:
    if _WORKER_JOB is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("render worker started without a job")
    return _render_chunk(_WORKER_JOB, bounds[0], bounds[1])


def _mp_context() -> Any:
    # fork starts a worker in milliseconds and shares the bars without copying; spawn (the only
    # safe choice on macOS and Windows) re-imports the package in each worker, ~1 s.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _worker_count(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 or None (all cores), got {workers!r}")
    return int(workers)


def _run(
    job: _Job, workers: int | None, chunk_size: int | None, rgb: np.ndarray | None = None
) -> list[Any]:
    """Render every end of the job in chunks, in-process or across worker processes; the chunks'
    results in the order of the ends. With ``rgb`` (output "indices"), the images are written
    there (in-process directly, from the workers' indices otherwise) and nothing is returned."""
    count = job.ends.shape[0]
    processes = _worker_count(workers)
    if mp.current_process().daemon:
        processes = 1  # a pool's worker may not start processes of its own
    if chunk_size is None:
        # A few chunks per worker balance the load; a chunk below _MIN_CHUNK windows costs about
        # as much to ship as to draw, so small jobs stay in this process. Large images get
        # smaller chunks, so that the reused buffer stays near _CHUNK_BYTES.
        by_memory = max(1, _CHUNK_BYTES // (job.height * job.width))
        wanted = max(_MIN_CHUNK, math.ceil(count / (4 * processes)))
        chunk = min(wanted, _DEFAULT_CHUNK, by_memory)
    else:
        chunk = _positive_int("chunk_size", chunk_size)
    bounds = [(s, min(s + chunk, count)) for s in range(0, count, chunk)]
    processes = min(processes, len(bounds))
    if processes <= 1:
        results = [_render_chunk(job, s, e, rgb) for s, e in bounds]
        _WARMED.add(job.output)
        return [] if rgb is not None else results
    if job.output not in _WARMED:
        # Compile (or load from the cache) once here, before forking: otherwise every worker
        # would load the kernels itself.
        _render_chunk(job, 0, 1)
        _WARMED.add(job.output)
    with cf.ProcessPoolExecutor(
        max_workers=processes, mp_context=_mp_context(), initializer=_init_worker, initargs=(job,)
    ) as pool:
        if rgb is None:
            return list(pool.map(_worker_chunk, bounds))
        for (start, stop), indices in zip(bounds, pool.map(_worker_chunk, bounds), strict=True):
            _expand_palette(indices, job.palette, rgb[start:stop])
        return []


# ---------------------------------------------------------------------------------------------
# Public rendering API


def render_windows(
    bars: pl.DataFrame,
    ends: Sequence[int] | np.ndarray,
    window: int,
    spec: RenderSpec = _DEFAULT_SPEC,
    *,
    output: Literal["array", "png"] = "array",
    workers: int | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | list[bytes]:
    """Render the window of ``window`` bars ending at each index of ``ends``.

    The image for end ``t`` draws ``bars[t - window + 1 : t + 1]``: bars up to ``t`` only (no
    look-ahead). ``bars`` needs ``open high low close`` (finite), ``volume`` when
    ``spec.volume`` (null counts as 0) and every column of ``spec.overlays`` (null allowed: a
    gap; :func:`with_overlays` adds them). An end with fewer than ``window`` bars up to it, or past
    the last bar, raises ``ValueError``; a window that does not fit the spec ``ConfigError``.

    ``output="array"``: an (n, H, W, 3) uint8 RGB array; ``output="png"``: a list of n PNG byte
    strings (palette PNGs, see :func:`encode_png`). Results follow the order of ``ends``
    (duplicates allowed) and are identical for any ``workers`` and ``chunk_size``.

    ``workers``: processes to render in (``None``: ``os.cpu_count()``; 1: in this process). Each
    worker draws ``chunk_size`` windows at a time into a buffer it reuses (default: a few chunks
    per worker, at most 256 windows each).
    """
    spec = _check_spec(spec)
    if output not in ("array", "png"):
        raise ValueError(f"output must be 'array' or 'png', got {output!r}")
    window = _positive_int("window", window)
    if not isinstance(bars, pl.DataFrame):
        raise TypeError(f"bars must be a polars DataFrame, got {type(bars).__name__}")
    if "ts" in bars.columns and not bars.get_column("ts").is_sorted():
        # a window is the rows before its end: in any other order it would show other times
        raise DataError("bars must be sorted by 'ts'", field="ts")
    chart_layout(spec, window)  # the window fits the spec, before any work
    end_indices = _check_ends(ends, window, bars.height)
    count = end_indices.shape[0]
    if count == 0:
        if output == "png":
            return []
        return np.empty((0, spec.height, spec.width, 3), dtype=np.uint8)
    # Only the bars the windows use travel to the workers.
    first = int(end_indices.min()) - window + 1
    last = int(end_indices.max())
    used = bars.slice(first, last - first + 1)
    kind = "png" if output == "png" else "indices"
    job = _make_job(used, end_indices - first, window, spec, kind, row_offset=first)
    if output == "png":
        return [png for chunk in _run(job, workers, chunk_size) for png in chunk]
    images = np.empty((count, spec.height, spec.width, 3), dtype=np.uint8)
    _run(job, workers, chunk_size, images)
    return images


@dataclass(frozen=True)
class PaletteImage:
    """A rendered chart as palette indices (H, W) uint8 and its (K, 3) uint8 palette."""

    indices: np.ndarray
    palette: np.ndarray

    def rgb(self) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image."""
        return self.palette[self.indices]

    def png(self, level: int = _PNG_LEVEL) -> bytes:
        """The indexed PNG (:func:`encode_png`)."""
        return encode_png(self.indices, self.palette, level=level)


def palette_image(window: pl.DataFrame, spec: RenderSpec = _DEFAULT_SPEC) -> PaletteImage:
    """Draw one window (every row of ``window``) as palette indices: the fast path behind
    :func:`render_window`; ``.png()`` encodes it, ``.rgb()`` expands it."""
    spec = _check_spec(spec)
    if not isinstance(window, pl.DataFrame):
        raise TypeError(f"window must be a polars DataFrame, got {type(window).__name__}")
    if window.height == 0:
        raise ValueError("window has no bars")
    chart_layout(spec, window.height)
    job = _make_job(window, np.array([window.height - 1], dtype=np.int64), window.height, spec, "")
    indices = _draw_indices(job, 0, 1)[0].copy()
    return PaletteImage(indices=indices, palette=spec.palette())


def render_window(window: pl.DataFrame, spec: RenderSpec = _DEFAULT_SPEC) -> np.ndarray:
    """Draw one window as an (H, W, 3) uint8 RGB image; the frame's rows are the window's bars
    (``open high low close``, ``volume`` when ``spec.volume``, the overlay columns)."""
    return palette_image(window, spec).rgb()


# ---------------------------------------------------------------------------------------------
# Overlay columns


def with_overlays(
    bars: pl.DataFrame, spec: RenderSpec = _DEFAULT_SPEC, params: IndicatorParams | None = None
) -> pl.DataFrame:
    """``bars`` with every overlay column of ``spec`` that it lacks, computed by the indicator
    registry (:mod:`aiopt_lib.features.registry`: TradingView-exact and causal, the value at bar t
    uses bars <= t).

    An overlay is a column name of a registered indicator output drawn on the price axis
    (:func:`aiopt_lib.features.registry.column_name`: ``sma_<n>``, ``ema_<n>``,
    ``bb_basis/bb_upper/bb_lower_<n>_<mult>``, ``kc_upper_<n>_<mult>``, ``supertrend_<f>_<n>``,
    optionally ``_<source>``), or any price-scale column of ``add_indicators(bars, params)`` when
    ``params`` is given. Columns already in ``bars`` are kept as they are. A name that is no
    such indicator, or an oscillator (``rsi_14``, ``atr_14`` ...: not on the price axis), raises
    :class:`ConfigError`.
    """
    spec = _check_spec(spec)
    if not isinstance(bars, pl.DataFrame):
        raise TypeError(f"bars must be a polars DataFrame, got {type(bars).__name__}")
    if params is not None and not isinstance(params, IndicatorParams):
        raise TypeError(f"params must be an IndicatorParams, got {type(params).__name__}")
    missing = [name for name in spec.overlays if name not in bars.columns]
    if not missing:
        return bars
    from_params = (
        {params.column(k): (params.request_for(k), k) for k in INDICATOR_KINDS} if params else {}
    )
    requests: list[IndicatorRequest] = []
    for name in missing:
        found = parse_column(name)
        if found is not None:
            definition, output, args, source = found
            request = IndicatorRequest(definition.name, args, source)
        elif name in from_params:
            request, output = from_params[name]
            definition = request.resolve()[0]
        else:
            raise ConfigError(
                f"overlay column {name!r} is not in the bars and is not an indicator name "
                "(sma_<n>, ema_<n>, bb_basis/bb_upper/bb_lower_<n>_<mult>[_<source>], ...)"
            )
        if output not in definition.overlay:
            raise ConfigError(
                f"overlay {name!r} is not on the price scale; overlays are drawn on the price "
                f"axis (price-scale outputs: {', '.join(overlay_outputs())})"
            )
        requests.append(request)
    computed = compute_frame(bars.select(c for c in bars.columns if c not in missing), requests)
    return bars.with_columns(computed.select(missing))
