"""The model-input chart renderer: pixels where the documented geometry puts them (computed here
independently from the documented formulas), a plain-Python reference renderer equal to the numba
one pixel for pixel on real windows, PNGs that Pillow decodes to the same pixels, byte-identical
output across runs and worker counts, and no look-ahead."""

from __future__ import annotations

import datetime as dt
import io
import math
import struct
import zlib

import numpy as np
import polars as pl
import pytest
from PIL import Image

import aiopt_lib.features.registry as ind
from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import render
from aiopt_lib.features.render import RenderSpec

OVERLAYS = ("ema_20", "sma_50", "bb_upper_20_2", "bb_lower_20_2")


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


@pytest.fixture(scope="module")
def sample_with_overlays(sample) -> pl.DataFrame:
    return render.with_overlays(sample, RenderSpec(overlays=(*OVERLAYS, "bb_basis_20_2")))


def frame(rows: list[tuple[float, float, float, float, float]], **extra: list) -> pl.DataFrame:
    """A bars frame from (open, high, low, close, volume) tuples, plus extra columns."""
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    data = {
        "ts": pl.Series([start + dt.timedelta(hours=i) for i in range(len(rows))]).cast(TS_DTYPE),
        "open": [r[0] for r in rows],
        "high": [r[1] for r in rows],
        "low": [r[2] for r in rows],
        "close": [r[3] for r in rows],
        "volume": [r[4] for r in rows],
    }
    result = pl.DataFrame(data)
    for name, values in extra.items():
        result = result.with_columns(pl.Series(name, values, dtype=pl.Float64))
    return result


# ---------------------------------------------------------------------------------------------
# The documented geometry, computed here from the module docstring's formulas


def geometry(spec: RenderSpec, n: int) -> dict[str, int]:
    width, height, m = spec.width, spec.height, spec.margin
    volume_rows = math.floor(height * spec.volume_fraction + 1e-9) if spec.volume else 0
    volume_bottom = height - 1 - m
    volume_top = volume_bottom - volume_rows + 1
    price_bottom = volume_top - max(m, 1) - 1 if spec.volume else height - 1 - m
    if spec.style == "jkx":
        first, slot, body, centre = 0, 3, 3, 1
    else:
        plot = width - 2 * m
        slot = plot // n
        first = m + (plot - slot * n) // 2
        body = max(1, slot - max(1, slot // 4))
        centre = (body - 1) // 2
    return {
        "first": first,
        "slot": slot,
        "body": body,
        "centre": centre,
        "top": m,
        "bottom": price_bottom,
        "volume_rows": volume_rows,
        "volume_top": volume_top,
        "volume_bottom": volume_bottom,
    }


def price_row(p: float, lo: float, hi: float, g: dict[str, int]) -> int:
    if hi == lo:
        return (g["top"] + g["bottom"]) // 2
    return g["bottom"] - math.floor((p - lo) / (hi - lo) * (g["bottom"] - g["top"]) + 0.5)


def bresenham(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    dx, dy = abs(x1 - x0), abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err, points = dx - dy, []
    while True:
        points.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return points
        e2 = 2 * err
        if e2 >= -dy:
            err, x0 = err - dy, x0 + sx
        if e2 <= dx:
            err, y0 = err + dx, y0 + sy


def reference_indices(window: pl.DataFrame, spec: RenderSpec) -> np.ndarray:
    """A plain-Python renderer of the documented rules (palette indices)."""
    n = window.height
    g = geometry(spec, n)
    o, h, lo_, c = (window[name].to_list() for name in ("open", "high", "low", "close"))
    overlays = [
        [None if v is None or math.isnan(v) else v for v in window[name].to_list()]
        for name in spec.overlays
    ]
    prices = o + h + lo_ + c + [v for col in overlays for v in col if v is not None]
    lo, hi = min(prices), max(prices)
    img = np.zeros((spec.height, spec.width), dtype=np.uint8)
    volumes = [max(v or 0.0, 0.0) for v in window["volume"].to_list()] if spec.volume else []
    vmax = max(volumes) if volumes else 0.0
    for j in range(n):
        colour = 1 if c[j] >= o[j] else 2
        left = g["first"] + j * g["slot"]
        r_open, r_close = price_row(o[j], lo, hi, g), price_row(c[j], lo, hi, g)
        r_high, r_low = price_row(h[j], lo, hi, g), price_row(lo_[j], lo, hi, g)
        if spec.style == "jkx":
            img[r_open, left] = colour
            img[r_high : r_low + 1, left + 1] = colour
            img[r_close, left + 2] = colour
            vol_columns = [left + 1]
        else:
            img[r_high : r_low + 1, left + g["centre"]] = colour
            body_rows = slice(min(r_open, r_close), max(r_open, r_close) + 1)
            img[body_rows, left : left + g["body"]] = colour
            vol_columns = list(range(left, left + g["body"]))
        if vmax > 0 and volumes[j] > 0:
            rows = math.floor(volumes[j] / vmax * g["volume_rows"] + 0.5)
            for x in vol_columns:
                img[g["volume_bottom"] - rows + 1 : g["volume_bottom"] + 1, x] = colour
    for k, values in enumerate(overlays):
        previous = None
        for j, value in enumerate(values):
            if value is None:
                previous = None
                continue
            point = (g["first"] + j * g["slot"] + g["centre"], price_row(value, lo, hi, g))
            path = [point] if previous is None else bresenham(*previous, *point)
            for x, y in path:
                img[y, x] = 3 + k
            previous = point
    return img


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        tag, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(tag + data)
        chunks.append((tag, data))
        at += 12 + length
    return chunks


# ---------------------------------------------------------------------------------------------
# Candles: exact geometry on a hand-made window

BARS = [
    (1.1000, 1.1050, 1.0980, 1.1040, 100.0),  # up
    (1.1040, 1.1060, 1.1000, 1.1010, 300.0),  # down, the largest volume
    (1.1010, 1.1010, 1.0950, 1.0960, 50.0),  # down, the window's low
    (1.0960, 1.1000, 1.0955, 1.0960, 0.0),  # doji: up colour, one-row body, no volume
    (1.0960, 1.1100, 1.0960, 1.1090, 200.0),  # up, the window's high
    (1.1090, 1.1095, 1.1020, 1.1030, 150.0),  # down
]


def colour_at(img: np.ndarray, row: int, col: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[row, col])


def test_candle_bodies_wicks_and_colours_follow_the_documented_geometry():
    spec = RenderSpec()
    img = render.render_window(frame(BARS), spec)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    g = geometry(spec, len(BARS))
    assert (g["slot"], g["body"], g["first"]) == (36, 27, 4)  # 220 // 6, 36 - 9, centred
    lo, hi = 1.0950, 1.1100
    bg = spec.background
    for j, (o, h, low, c, _) in enumerate(BARS):
        colour = spec.up_colour if c >= o else spec.down_colour
        left = g["first"] + j * g["slot"]
        body_top, body_bottom = price_row(max(o, c), lo, hi, g), price_row(min(o, c), lo, hi, g)
        # the body: exactly these rows and columns
        block = img[body_top : body_bottom + 1, left : left + g["body"]]
        assert (block == colour).all(), f"bar {j}"
        # just above and below the body, in a body column that is not the wick: background
        assert g["centre"] != 0
        assert colour_at(img, body_top - 1, left) == bg
        assert colour_at(img, body_bottom + 1, left) == bg
        # the gap after the body is background over the whole price pane
        gap = img[g["top"] : g["bottom"] + 1, left + g["body"] : left + g["slot"]]
        assert (gap == bg).all()
        # the wick: from the high's row to the low's row in the centre column, not beyond
        wick = left + g["centre"]
        top, bottom = price_row(h, lo, hi, g), price_row(low, lo, hi, g)
        assert (img[top : bottom + 1, wick] == colour).all()
        assert top == g["top"] or colour_at(img, top - 1, wick) == bg
        assert bottom == g["bottom"] or colour_at(img, bottom + 1, wick) == bg
    # the window's high and low land on the first and last price rows
    assert price_row(1.1100, lo, hi, g) == g["top"] and price_row(1.0950, lo, hi, g) == g["bottom"]
    # the doji is a one-row body in the up colour
    doji_left = g["first"] + 3 * g["slot"]
    doji_row = price_row(1.0960, lo, hi, g)
    assert colour_at(img, doji_row, doji_left) == spec.up_colour
    assert colour_at(img, doji_row - 1, doji_left) == bg == colour_at(img, doji_row + 1, doji_left)
    # nothing outside the plot
    assert (img[:, : g["first"]] == bg).all() and (img[: g["top"]] == bg).all()


def test_volume_bars_are_proportional_to_the_window_maximum():
    spec = RenderSpec(width=120, height=100, volume_fraction=0.3)
    img = render.render_window(frame(BARS), spec)
    g = geometry(spec, len(BARS))
    assert g["volume_rows"] == 30
    heights = []
    for j, (o, _, _, c, volume) in enumerate(BARS):
        colour = spec.up_colour if c >= o else spec.down_colour
        left = g["first"] + j * g["slot"]
        pane = img[g["volume_top"] : g["volume_bottom"] + 1, left : left + g["body"]]
        filled = (pane == colour).all(axis=2)
        rows = int(filled[:, 0].sum())
        assert (filled.sum(axis=0) == rows).all()  # every body column alike
        if rows:  # filled from the bottom up
            assert filled[-rows:].all()
        heights.append(rows)
        assert rows == math.floor(volume / 300.0 * 30 + 0.5)
    assert heights == [10, 30, 5, 0, 20, 15]
    # the separator rows between the panes are blank
    assert (img[g["bottom"] + 1 : g["volume_top"]] == spec.background).all()


def test_overlays_are_lines_through_bar_centres_with_gaps_at_nulls_and_scale_the_window():
    ema = [None, 1.1000, 1.1020, None, 1.1150, 1.1080]  # 1.1150: above every high
    spec = RenderSpec(overlays=("ema_x",), volume=False)
    img = render.render_window(frame(BARS, ema_x=ema), spec)
    g = geometry(spec, len(BARS))
    lo, hi = 1.0950, 1.1150
    line = spec.overlay_colours[0]
    centres = [g["first"] + j * g["slot"] + g["centre"] for j in range(len(BARS))]
    for j, value in enumerate(ema):
        if value is not None:
            assert colour_at(img, price_row(value, lo, hi, g), centres[j]) == line
    assert price_row(1.1150, lo, hi, g) == g["top"]  # the overlay sets the top of the scale
    is_line = (img == line).all(axis=2)
    # gaps: nothing before the first value, nothing between the neighbours of the null
    assert not is_line[:, : centres[1]].any()
    assert not is_line[:, centres[2] + 1 : centres[4]].any()
    # a connected segment: every column between two defined neighbours holds the line
    for x in range(centres[4], centres[5] + 1):
        assert is_line[:, x].any()
    # the bodies moved with the overlay-widened scale
    o, _, _, c, _ = BARS[4]
    body_top = price_row(max(o, c), lo, hi, g)
    assert colour_at(img, body_top, g["first"] + 4 * g["slot"]) == spec.up_colour
    assert colour_at(img, body_top - 1, g["first"] + 4 * g["slot"]) == spec.background


def test_a_constant_window_is_drawn_at_mid_height():
    flat = frame([(1.1, 1.1, 1.1, 1.1, 5.0)] * 4)
    spec = RenderSpec(width=40, height=40, volume=False)
    img = render.render_window(flat, spec)
    g = geometry(spec, 4)
    mid = (g["top"] + g["bottom"]) // 2
    drawn = ~(img == spec.background).all(axis=2)
    assert drawn.any()
    assert set(np.flatnonzero(drawn.any(axis=1))) == {mid}
    assert (img[mid, g["first"] : g["first"] + g["body"]] == spec.up_colour).all()


# ---------------------------------------------------------------------------------------------
# jkx


def test_jkx_bars_ticks_and_volume_on_a_real_window(sample):
    spec = RenderSpec.jkx(20)
    assert (spec.width, spec.height, spec.margin) == (60, 64, 0)
    window = sample.slice(1000, 20)
    img = render.render_window(window, spec)
    assert img.shape == (64, 60, 3)
    assert set(map(tuple, img.reshape(-1, 3).tolist())) == {(0, 0, 0), (255, 255, 255)}
    white = (img == 255).all(axis=2)
    g = geometry(spec, 20)
    assert (g["bottom"], g["volume_top"], g["volume_rows"]) == (50, 52, 12)
    lo, hi = float(window["low"].min()), float(window["high"].max())
    vmax = float(window["volume"].max())
    assert not white[51].any()  # the blank row between the panes
    for j, bar in enumerate(window.iter_rows(named=True)):
        r_open = price_row(bar["open"], lo, hi, g)
        r_close = price_row(bar["close"], lo, hi, g)
        r_high, r_low = price_row(bar["high"], lo, hi, g), price_row(bar["low"], lo, hi, g)
        # left pixel: only the open tick; right pixel: only the close tick
        assert np.flatnonzero(white[: g["bottom"] + 1, 3 * j]).tolist() == [r_open]
        assert np.flatnonzero(white[: g["bottom"] + 1, 3 * j + 2]).tolist() == [r_close]
        # middle column: the high-low bar, exactly
        assert np.flatnonzero(white[: g["bottom"] + 1, 3 * j + 1]).tolist() == list(
            range(r_high, r_low + 1)
        )
        # volume: the middle column only, from the bottom
        rows = math.floor(bar["volume"] / vmax * 12 + 0.5)
        assert int(white[52:, 3 * j + 1].sum()) == rows and white[64 - rows :, 3 * j + 1].all()
        assert not white[52:, 3 * j].any() and not white[52:, 3 * j + 2].any()


def test_jkx_moving_average_line_passes_the_middle_columns(sample):
    spec = RenderSpec(
        style="jkx", width=60, height=64, overlays=("sma_20",), overlay_colours=("#ff0000",)
    )
    bars = render.with_overlays(sample, spec)
    window = bars.slice(3000, 20)
    img = render.render_window(window, spec)
    g = geometry(spec, 20)
    values = window["sma_20"].to_list()
    lo = min(float(window["low"].min()), min(values))
    hi = max(float(window["high"].max()), max(values))
    for j, value in enumerate(values):
        assert colour_at(img, price_row(value, lo, hi, g), 3 * j + 1) == (255, 0, 0)


def test_numba_renderer_equals_the_python_reference_on_real_windows(sample_with_overlays):
    bars = sample_with_overlays
    cases = [
        (RenderSpec(overlays=OVERLAYS), 64, [63, 70, 1500, 6224]),  # sma_50 partly null at 70
        (RenderSpec(width=97, height=81, margin=0, overlays=("bb_basis_20_2",)), 30, [29, 800]),
        (RenderSpec(width=224, height=224, volume=False), 7, [10, 4000]),  # wide bodies
        (RenderSpec(width=52, height=60, margin=1), 50, [2000]),  # one column per bar
        (RenderSpec.jkx(20, overlays=("ema_20",)), 20, [19, 25, 5000]),  # ema null up to 18
        (RenderSpec.jkx(5, volume=False), 5, [4, 321]),
    ]
    for spec, window, ends in cases:
        for end in ends:
            frame_ = bars.slice(end - window + 1, window)
            expected = reference_indices(frame_, spec)
            image = render.palette_image(frame_, spec)
            assert np.array_equal(image.indices, expected), (spec, window, end)
            assert np.array_equal(image.rgb(), spec.palette()[expected])


def test_overlay_segments_follow_the_documented_bresenham_rule():
    # every direction and slope, ties (dx == 2 dy) included, against the plain-Python rule
    for x0, y0 in [(5, 5), (0, 12), (12, 0)]:
        for x1 in range(13):
            for y1 in range(13):
                img = np.zeros((13, 13), dtype=np.uint8)
                render._line(img, x0, y0, x1, y1, 7)
                expected = np.zeros_like(img)
                for x, y in bresenham(x0, y0, x1, y1):
                    expected[y, x] = 7
                assert np.array_equal(img, expected), (x0, y0, x1, y1)


def test_up_down_colours_agree_with_the_bars_on_the_real_sample(sample):
    spec = RenderSpec()
    window = 64
    ends = np.linspace(window - 1, sample.height - 1, 40).astype(np.int64)
    images = render.render_windows(sample, ends, window, spec, workers=1)
    g = geometry(spec, window)
    checked = 0
    for end, img in zip(ends, images, strict=True):
        bars = sample.slice(int(end) - window + 1, window)
        for j, (o, c) in enumerate(zip(bars["open"], bars["close"], strict=True)):
            left = g["first"] + j * g["slot"]
            columns = img[g["top"] : g["bottom"] + 1, left : left + g["body"]].reshape(-1, 3)
            found = {tuple(p) for p in columns.tolist()} - {spec.background}
            assert found == {spec.up_colour if c >= o else spec.down_colour}, (end, j)
            checked += 1
    assert checked == 40 * 64


# ---------------------------------------------------------------------------------------------
# PNG


@pytest.mark.parametrize(
    ("colours", "depth"), [(2, 1), (3, 2), (4, 2), (5, 4), (16, 4), (17, 8), (256, 8)]
)
@pytest.mark.parametrize("width", [1, 7, 13, 64])
def test_encode_png_indexed_decodes_to_the_same_pixels(colours, depth, width):
    rng = np.random.default_rng(colours * 100 + width)
    palette = rng.integers(0, 256, (colours, 3)).astype(np.uint8)
    indices = rng.integers(0, colours, (9, width)).astype(np.uint8)
    png = render.encode_png(indices, palette)
    chunks = png_chunks(png)
    assert [tag for tag, _ in chunks] == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]
    w, h, bits, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (w, h, bits, colour_type) == (width, 9, depth, 3)
    # every scanline starts with filter type 0
    raw = zlib.decompress(chunks[2][1])
    row_bytes = 1 + (width * depth + 7) // 8
    assert len(raw) == 9 * row_bytes and all(raw[r * row_bytes] == 0 for r in range(9))
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "P"
    assert np.array_equal(decode(png), palette[indices])
    assert render.encode_png(indices, palette) == png


def test_encode_png_rgb_and_grey():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (11, 17, 3)).astype(np.uint8)
    assert np.array_equal(decode(render.encode_png(rgb)), rgb)
    grey = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render.encode_png(grey)))), grey)
    with pytest.raises(ValueError, match="palette has 3 colours"):
        render.encode_png(np.full((2, 2), 3, dtype=np.uint8), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        render.encode_png(np.zeros((2, 2), dtype=np.int32))


def test_png_output_is_deterministic_across_runs_and_worker_counts_and_decodes_to_the_array(
    sample_with_overlays,
):
    bars = sample_with_overlays
    spec = RenderSpec(overlays=OVERLAYS)
    ends = [6224, 63, 700, 700, 3333, 150, 4242, 5000, 64, 2718]  # unsorted, a duplicate
    first = render.render_windows(bars, ends, 64, spec, output="png", workers=1)
    again = render.render_windows(bars, ends, 64, spec, output="png", workers=1)
    parallel = render.render_windows(bars, ends, 64, spec, output="png", workers=2, chunk_size=2)
    assert first == again == parallel
    arrays = render.render_windows(bars, ends, 64, spec, output="array", workers=1)
    arrays_parallel = render.render_windows(bars, ends, 64, spec, workers=2, chunk_size=3)
    assert np.array_equal(arrays, arrays_parallel)
    for png, array, end in zip(first, arrays, ends, strict=True):
        assert np.array_equal(decode(png), array)
        # in the order of ends: each is its own window
        own = render.render_window(bars.slice(end - 63, 64), spec)
        assert np.array_equal(array, own)
    assert first[2] == first[3]
    assert render.palette_image(bars.slice(700 - 63, 64), spec).png() == first[2]


def test_jkx_png_decodes_to_the_array(sample):
    spec = RenderSpec.jkx(20)
    ends = [19, 100, 6000]
    pngs = render.render_windows(sample, ends, 20, spec, output="png", workers=1)
    arrays = render.render_windows(sample, ends, 20, spec, workers=1)
    for png, array in zip(pngs, arrays, strict=True):
        assert decode(png).shape == (64, 60, 3)
        assert np.array_equal(decode(png), array)


# ---------------------------------------------------------------------------------------------
# No look-ahead


def test_an_image_uses_only_bars_up_to_its_end(sample):
    spec = RenderSpec(overlays=("ema_20", "bb_upper_20_2", "bb_lower_20_2"))
    full = render.with_overlays(sample, spec)
    for end in (80, 2500, 6000):
        image = render.render_windows(full, [end], 64, spec, output="png", workers=1)
        cut = render.with_overlays(sample.head(end + 1), spec)
        assert render.render_windows(cut, [end], 64, spec, output="png", workers=1) == image
        # and a different future changes nothing either
        future = sample.with_columns(
            pl.when(pl.int_range(pl.len()) > end)
            .then(pl.col(name) * 1.5)
            .otherwise(pl.col(name))
            .alias(name)
            for name in ("open", "high", "low", "close", "volume")
        )
        changed = render.with_overlays(future, spec)
        assert render.render_windows(changed, [end], 64, spec, output="png", workers=1) == image


# ---------------------------------------------------------------------------------------------
# The spec, the layout and errors


def test_spec_defaults_resolve_per_style_and_compare_equal():
    assert RenderSpec() == RenderSpec(margin=2, background="#ffffff", up_colour=(38, 166, 154))
    jkx = RenderSpec(style="jkx", width=60, height=64)
    assert jkx == RenderSpec.jkx(20)
    assert (jkx.background, jkx.up_colour, jkx.down_colour) == ((0, 0, 0), (255,) * 3, (255,) * 3)
    assert RenderSpec(overlays=["ema_20"]).overlays == ("ema_20",)
    palette = RenderSpec(overlays=("a_1", "b_2"), overlay_colours=("#010203", (4, 5, 6))).palette()
    assert palette.tolist()[3:] == [[1, 2, 3], [4, 5, 6]]
    assert RenderSpec.jkx(60).height == 96 and RenderSpec.jkx(7, height=40).width == 21


def test_chart_layout_matches_the_documented_formulas():
    for spec, n in [(RenderSpec(), 64), (RenderSpec(width=97, height=81, margin=0), 30)]:
        layout = render.chart_layout(spec, n)
        g = geometry(spec, n)
        assert (layout.first_column, layout.slot, layout.body_width) == (
            g["first"],
            g["slot"],
            g["body"],
        )
        assert (layout.price_top, layout.price_bottom, layout.volume_top) == (
            g["top"],
            g["bottom"],
            g["volume_top"],
        )
        assert layout.centre_column(3) == g["first"] + 3 * g["slot"] + g["centre"]
        assert layout.price_row(1.2, 1.0, 1.2) == g["top"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"style": "bars"}, "style"),
        ({"style": "jkx", "width": 64, "height": 64}, "3 × window"),
        ({"style": "jkx", "width": 60, "height": 64, "margin": 2}, "no margin"),
        ({"width": 0}, "width"),
        ({"margin": -1}, "margin"),
        ({"volume_fraction": 0.0}, "volume_fraction"),
        ({"volume_fraction": 1.5}, "volume_fraction"),
        ({"height": 4}, "price row"),
        ({"overlays": ("ema_20", "ema_20")}, "twice"),
        ({"overlays": ("close",)}, "bar columns"),
        ({"overlays": tuple(f"ema_{n}" for n in range(2, 11))}, "overlay_colours"),
        ({"up_colour": "#12345"}, "up_colour"),
        ({"background": (0, 0, 256)}, "background"),
    ],
)
def test_bad_specs_raise_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        RenderSpec(**options)


def test_windows_that_do_not_fit_and_bad_ends(sample):
    with pytest.raises(ConfigError, match="21 bars is 63 px wide"):
        render.render_windows(sample, [30], 21, RenderSpec.jkx(20))
    with pytest.raises(ConfigError, match="do not fit"):
        render.render_windows(sample, [400], 300, RenderSpec())
    with pytest.raises(ValueError, match=r"end 10 .* has 11 bar"):
        render.render_windows(sample, [100, 10], 64)
    with pytest.raises(ValueError, match="past the last bar"):
        render.render_windows(sample, [sample.height], 64)
    with pytest.raises(ValueError, match="integer"):
        render.render_windows(sample, [100.0], 64)
    with pytest.raises(ValueError, match="output"):
        render.render_windows(sample, [100], 64, output="jpeg")
    with pytest.raises(ValueError, match="workers"):
        render.render_windows(sample, [100], 64, workers=0)
    with pytest.raises(ConfigError, match="with_overlays"):
        render.render_windows(sample, [100], 64, RenderSpec(overlays=("ema_20",)))
    assert render.render_windows(sample, [], 64).shape == (0, 224, 224, 3)
    assert render.render_windows(sample, np.array([], dtype=np.int64), 64, output="png") == []


def test_bad_prices_raise_data_error_naming_the_row(sample):
    broken = sample.head(80).with_columns(
        pl.when(pl.int_range(pl.len()) == 70).then(None).otherwise(pl.col("close")).alias("close")
    )
    with pytest.raises(DataError, match="row 70, field 'close'"):
        render.render_windows(broken, [79], 64)
    with pytest.raises(DataError, match="sorted"):
        render.render_windows(sample.head(80).reverse(), [79], 64)


def test_null_and_negative_volume_draw_no_volume_bar():
    rows = [(1.0, 1.2, 0.9, 1.1, 10.0), (1.1, 1.3, 1.0, 1.2, -5.0), (1.2, 1.25, 1.1, 1.15, None)]
    spec = RenderSpec(width=30, height=50)
    img = render.render_window(frame(rows), spec)
    g = geometry(spec, 3)
    pane = ~(img[g["volume_top"] : g["volume_bottom"] + 1] == spec.background).all(axis=2)
    assert pane[:, g["first"]].all()  # the largest (only positive) volume fills the pane
    second, third = g["first"] + g["slot"], g["first"] + 2 * g["slot"]
    assert not pane[:, second:].any() and third > second


# ---------------------------------------------------------------------------------------------
# with_overlays


def test_with_overlays_adds_the_indicators_by_name(sample):
    spec = RenderSpec(
        overlays=("ema_20", "sma_50", "bb_upper_20_2", "bb_lower_20_2", "bb_basis_20_2")
    )
    bars = render.with_overlays(sample, spec)
    reference = ind.add_indicators(sample)
    for name in spec.overlays:
        assert bars[name].null_count() == reference[name].null_count()
        assert bars[name].equals(reference[name]), name
    assert bars.columns[: sample.width] == sample.columns
    # other parameters and sources, named as column_name names them
    spec = RenderSpec(overlays=("ema_9_open", "bb_upper_10_2.5", "sma_30"))
    bars = render.with_overlays(sample, spec)
    assert bars["ema_9_open"].equals(ind.add_ema(sample, 9, "open")["ema_9_open"])
    assert bars["bb_upper_10_2.5"].equals(ind.add_bollinger(sample, 10, 2.5)["bb_upper_10_2.5"])
    with_params = render.with_overlays(sample, spec, ind.IndicatorParams(sma_length=30))
    assert with_params["sma_30"].equals(ind.add_sma(sample, 30)["sma_30"])


def test_with_overlays_keeps_existing_columns_and_refuses_unknown_names(sample):
    mine = sample.with_columns(pl.lit(1.1).alias("ema_20"))
    kept = render.with_overlays(mine, RenderSpec(overlays=("ema_20",)))
    assert kept["ema_20"].unique().to_list() == [1.1]
    assert render.with_overlays(sample, RenderSpec()) is sample
    with pytest.raises(ConfigError, match="not an indicator name"):
        render.with_overlays(sample, RenderSpec(overlays=("vwap",)))
    with pytest.raises(ConfigError, match="not on the price scale"):
        render.with_overlays(sample, RenderSpec(overlays=("rsi_14",)))
