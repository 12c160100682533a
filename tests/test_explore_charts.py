import datetime as dt
from collections import deque

import matplotlib
import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.data.cleaning import classify_gaps
from aiopt_lib.data.explore import describe_bars, hour_of_week_profile, pip_size
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features import registry as reg
from aiopt_lib.viz import charts

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


def test_pip_size():
    assert pip_size("EURUSD") == 0.0001
    assert pip_size("USDJPY") == 0.01
    assert pip_size("XAUUSD") == 0.1


def test_describe_bars(sample):
    row = describe_bars(sample).to_dicts()[0]
    assert row["bars"] == 6225
    assert row["timeframe"] == "1h"
    assert row["lowest"] == sample["low"].min() and row["highest"] == sample["high"].max()
    with_spread = sample.with_columns(pl.lit(0.00012).alias("spread"))
    assert describe_bars(with_spread)["mean_spread_pips"].item() == pytest.approx(1.2)


def test_hour_of_week_profile_indexes_hours_from_monday(sample):
    profile = hour_of_week_profile(sample)
    assert profile["hour_of_week"].is_sorted()
    assert profile["hour_of_week"].min() >= 0 and profile["hour_of_week"].max() <= 167
    # the sample has Sunday-evening bars (22:00 and 23:00 UTC): hours 166 and 167, day "Sun"
    sunday = profile.filter(pl.col("day") == "Sun")
    assert set(sunday["hour"].to_list()) >= {22, 23}
    assert set(sunday["hour_of_week"].to_list()) >= {166, 167}
    assert profile["bars"].sum() == sample.height
    assert profile["median_spread_pips"].null_count() == profile.height  # no spread in the sample
    # a hand-checked value: Monday 10:00 UTC median range in pips
    monday10 = sample.filter((pl.col("ts").dt.weekday() == 1) & (pl.col("ts").dt.hour() == 10))
    expected = ((monday10["high"] - monday10["low"]) / 1e-4).median()
    assert profile.filter(pl.col("hour_of_week") == 10)[
        "median_range_pips"
    ].item() == pytest.approx(expected)


def test_price_chart_shades_gaps(sample):
    gaps = classify_gaps(sample)
    chart = charts.price_chart(sample, gaps)
    spec = chart.to_dict()
    layers = spec["layer"]
    rect = next(layer for layer in layers if layer["mark"]["type"] == "rect")
    assert rect["encoding"]["x"]["field"] == "from" and rect["encoding"]["x2"]["field"] == "to"
    values = sorted(spec["datasets"].values(), key=len)
    assert [len(v) for v in values] == [gaps.height, sample.height]
    assert values[1][0]["ts"] == "2017-01-01T22:00:00Z"


def test_downsample_keeps_the_extremes():
    n = 50_000
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    close = [1.0 + (i % 100) * 1e-4 for i in range(n)]
    bars = pl.DataFrame(
        {
            "ts": [start + dt.timedelta(minutes=i) for i in range(n)],
            "open": close,
            "high": [c + 1e-5 for c in close],
            "low": [c - 1e-5 for c in close],
            "close": close,
            "volume": [1.0] * n,
        },
        schema_overrides={"ts": TS_DTYPE},
    ).with_columns(
        pl.when(pl.int_range(pl.len()) == 31_337).then(5.0).otherwise(pl.col("high")).alias("high")
    )
    small = charts._downsample_close(bars, 2_000)
    assert small.height <= 2_100
    assert small["close"].max() == 5.0  # a spike survives downsampling
    assert small["ts"].is_sorted()


def test_offline_renderer_inlines_bundle_once(sample):
    charts.enable_offline_altair()
    charts._bundle_emitted = False
    first = charts._offline_renderer(charts.price_chart(sample.head(50)).to_dict())["text/html"]
    second = charts._offline_renderer(charts.price_chart(sample.head(50)).to_dict())["text/html"]
    assert "window.vegaEmbed" in first and "window.vegaEmbed" not in second
    assert "cdn" not in second.lower() and 'src="http' not in first


def test_candle_chart_window(sample):
    fig = charts.candle_chart(sample, end="2017-06-30T12:00:00Z", n_bars=50)
    axes = fig.get_axes()
    assert len(axes) >= 2  # price and volume panels
    with pytest.raises(ValueError, match="no bars"):
        charts.candle_chart(sample, end="2000-01-01", n_bars=10)


def test_candle_chart_marks_patterns(sample):
    from aiopt_lib.features.patterns import add_patterns

    featured = add_patterns(sample)
    window = featured.tail(120)
    fired = window.select(pl.col("^pat_.*$").any()).row(0)
    fig = charts.candle_chart(featured, n_bars=120, patterns=True)
    scatter = [c for ax in fig.get_axes() for c in ax.collections if c.get_offsets().shape[0] > 0]
    assert any(fired) and scatter  # markers drawn where patterns fired
    legend = fig.get_axes()[0].get_legend()
    assert legend is not None and "bullish pattern" in [t.get_text() for t in legend.get_texts()]
    with pytest.raises(ValueError, match="add_patterns"):
        charts.candle_chart(sample, patterns=["hammer"])


def test_indicator_panels_and_class_balance(sample):
    from aiopt_lib.features.labels import class_balance, triple_barrier_labels
    from aiopt_lib.features.registry import add_indicators

    with pytest.raises(ValueError, match="add_indicators"):
        charts.indicator_panels(sample)
    spec = charts.indicator_panels(add_indicators(sample), n_bars=300).to_dict()
    assert len(spec["vconcat"]) == 5
    assert [len(v) for v in spec["datasets"].values() if len(v) > 2] == [300]
    labels = triple_barrier_labels(sample)
    balance_spec = charts.class_balance_chart(class_balance(labels)).to_dict()
    values = next(iter(balance_spec["datasets"].values()))
    assert sorted(v["class"] for v in values) == ["BUY", "HOLD", "SELL"]


def _signals_and_trades(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    tail = frame.tail(60)
    signals = pl.DataFrame({"ts": [tail["ts"][5], tail["ts"][30]], "signal": ["BUY", "SELL"]})
    trades = pl.DataFrame(
        {
            "entry_ts": [tail["ts"][6], tail["ts"][31]],
            "exit_ts": [tail["ts"][20], tail["ts"][50]],
            "side": ["long", "short"],
            "entry_price": [tail["open"][6], tail["open"][31]],
            "exit_price": [tail["close"][20], tail["close"][50]],
        }
    )
    return signals, trades


def test_candle_chart_with_indicator_panels_signals_and_trades(sample):
    signals, trades = _signals_and_trades(sample)
    fig = charts.candle_chart(
        sample, n_bars=60, indicators=("bb", "ema", "rsi", "macd"), signals=signals, trades=trades
    )
    labels = [ax.get_ylabel() for ax in fig.get_axes()]
    assert "RSI" in labels and "MACD" in labels
    texts = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    assert "BUY signal" in texts and "SELL signal" in texts
    # two trade segments drawn on the price axes, one per trade
    segments = [c for c in fig.get_axes()[0].collections if type(c).__name__ == "LineCollection"]
    assert sum(len(c.get_segments()) for c in segments) >= 2
    with pytest.raises(ValueError, match="unknown indicator"):
        charts.candle_chart(sample, indicators=("vwap",))


def test_trading_chart_layers(sample):
    signals, trades = _signals_and_trades(sample)
    spec = charts.trading_chart(sample, signals=signals, trades=trades, n_bars=60).to_dict()
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks.count("rule") == 2 and "bar" in marks and "line" in marks and "point" in marks
    sizes = sorted(len(v) for v in spec["datasets"].values())
    assert sizes == [2, 2, 60, 60]
    assert spec["params"][0]["bind"] == "scales"  # zoom


# ---------------------------------------------------------------------------------------------
# Indicators on the three charts come from the registry


def _toy_mid(high: np.ndarray, low: np.ndarray, length: int) -> np.ndarray:
    """The mean of hl2 over ``length`` bars (a price-scale line), NaN before ``length`` bars."""
    hl2 = (high + low) / 2.0
    out = np.full(len(hl2), np.nan)
    if len(hl2) >= length:
        out[length - 1 :] = np.lib.stride_tricks.sliding_window_view(hl2, length).mean(axis=1)
    return out


def _toy_osc(close: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Momentum ``close - close[length]`` and its one-bar change (drawn as bars)."""
    line = np.full(len(close), np.nan)
    line[length:] = close[length:] - close[:-length]
    change = np.full(len(close), np.nan)
    change[1:] = line[1:] - line[:-1]
    return line, change


class _ToyMidStream:
    def __init__(self, length: int) -> None:
        self.values: deque[float] = deque(maxlen=length)

    def update(self, open, high, low, close, volume) -> tuple[float, ...]:
        self.values.append((high + low) / 2.0)
        full = len(self.values) == self.values.maxlen
        return (sum(self.values) / len(self.values) if full else np.nan,)


class _ToyOscStream:
    def __init__(self, length: int) -> None:
        self.closes: deque[float] = deque(maxlen=length + 1)
        self.last = np.nan

    def update(self, open, high, low, close, volume) -> tuple[float, ...]:
        self.closes.append(close)
        line = close - self.closes[0] if len(self.closes) == self.closes.maxlen else np.nan
        change, self.last = line - self.last, line
        return line, change


TOY_MID = reg.IndicatorDef(
    name="toy_mid",
    title="Toy midline",
    pine_name="ta.sma",
    params=(reg.IndicatorParam("length", 10, 2, 50),),
    outputs=("toy_mid",),
    inputs=("high", "low"),
    compute=_toy_mid,
    stream=_ToyMidStream,
    pine=(reg.PineStep(("toy_mid",), "ta.sma(hl2, {length})"),),
    warmup=lambda length: (length - 1,),
    overlay=frozenset({"toy_mid"}),
    description="a price-scale toy for the chart tests",
)
TOY_OSC = reg.IndicatorDef(
    name="toy_osc",
    title="Toy oscillator",
    pine_name="ta.mom",
    params=(reg.IndicatorParam("length", 10, 2, 50),),
    outputs=("toy_line", "toy_bar"),
    inputs=("close",),
    compute=_toy_osc,
    stream=_ToyOscStream,
    pine=(
        reg.PineStep(("toy_line",), "close - close[{length}]"),
        reg.PineStep(("toy_bar",), "{toy_line} - {toy_line}[1]"),
    ),
    warmup=lambda length: (length, length + 1),
    levels=(0.0,),
    histogram=frozenset({"toy_bar"}),
    description="an oscillator toy for the chart tests",
)


@pytest.fixture
def toys():
    reg.register(TOY_MID)
    try:
        reg.register(TOY_OSC)
        try:
            yield TOY_MID, TOY_OSC
        finally:
            reg.unregister(TOY_OSC.name)
    finally:
        reg.unregister(TOY_MID.name)


@pytest.fixture(scope="module")
def bars(sample) -> pl.DataFrame:
    return sample.tail(800)


def _request(name: str) -> reg.IndicatorRequest:
    """The request a chart draws ``name`` with: ``IndicatorParams()``'s, else the defaults."""
    return {r.name: r for r in reg.IndicatorParams().requests()}.get(
        name, reg.IndicatorRequest(name)
    )


def _drawn_columns(name: str, request: reg.IndicatorRequest | None = None) -> tuple[list, bool]:
    """(the columns a chart draws for ``name``, whether they go on the price axis)."""
    definition = reg.REGISTRY[name]
    outputs = dict(zip(definition.outputs, (request or _request(name)).columns(), strict=True))
    if definition.overlay:
        return [c for o, c in outputs.items() if o in definition.overlay], True
    return list(outputs.values()), False


def _mpl_labels(ax) -> set[str]:
    """The labels of an axes' lines and bar groups."""
    return {line.get_label() for line in ax.lines} | {c.get_label() for c in ax.containers}


def _spec_fields(spec) -> set[str]:
    """Every field a (sub)spec encodes or folds, dots unescaped."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "fold":
                    found.update(f.replace("\\.", ".") for f in value)
                elif key == "field" and isinstance(value, str):
                    found.add(value.replace("\\.", "."))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def _spec_titles(spec) -> set[str]:
    """Every y-axis title in a (sub)spec."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            y = node.get("encoding", {}).get("y", {})
            if isinstance(y.get("title"), str):
                found.add(y["title"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def _check_candle_chart(bars: pl.DataFrame, name: str) -> None:
    import matplotlib.pyplot as plt

    columns, on_price = _drawn_columns(name)
    fig = charts.candle_chart(bars, n_bars=60, indicators=(name,))
    try:
        axes = fig.get_axes()
        title = reg.REGISTRY[name].title
        if on_price:
            assert set(columns) <= _mpl_labels(axes[0]), name
            assert title not in [ax.get_ylabel() for ax in axes], name
        else:
            panel = [ax for ax in axes if ax.get_ylabel() == title]
            assert len(panel) == 1, (name, [ax.get_ylabel() for ax in axes])
            assert set(columns) <= _mpl_labels(panel[0]), name
            assert not set(columns) & _mpl_labels(axes[0]), name
            definition = reg.REGISTRY[name]
            if definition.bounds is not None:
                assert panel[0].get_ylim() == pytest.approx(definition.bounds), name
            dashed = [line for line in panel[0].lines if line.get_linestyle() == "--"]
            assert sorted(line.get_ydata()[0] for line in dashed) == sorted(definition.levels)
            hist = {reg.column_name(o, *_request(name).resolve()[1:]) for o in definition.histogram}
            assert hist <= {c.get_label() for c in panel[0].containers}, name
    finally:
        plt.close(fig)


def _check_indicator_panels(bars: pl.DataFrame, name: str) -> None:
    columns, on_price = _drawn_columns(name)
    frame = reg.compute_frame(bars, [_request(name)])
    spec = charts.indicator_panels(frame, indicators=(name,), n_bars=100).to_dict()
    title = reg.REGISTRY[name].title
    if on_price:
        assert len(spec["vconcat"]) == 1, name
        assert set(columns) <= _spec_fields(spec["vconcat"][0]), name
    else:
        assert len(spec["vconcat"]) == 2, name
        assert set(columns) <= _spec_fields(spec["vconcat"][1]), name
        assert not set(columns) & _spec_fields(spec["vconcat"][0]), name
        assert _spec_titles(spec["vconcat"][1]) == {title}, name


def _check_trading_chart(bars: pl.DataFrame, name: str) -> None:
    columns, on_price = _drawn_columns(name)
    spec = charts.trading_chart(bars, overlays=(name,), n_bars=60).to_dict()
    if on_price:
        assert "layer" in spec and "vconcat" not in spec, name
        assert set(columns) <= _spec_fields(spec), name
    else:
        assert len(spec["vconcat"]) == 2, name
        assert not set(columns) & _spec_fields(spec["vconcat"][0]), name
        assert set(columns) <= _spec_fields(spec["vconcat"][1]), name
        assert _spec_titles(spec["vconcat"][1]) == {reg.REGISTRY[name].title}, name


_CHECKS = {
    "candle_chart": _check_candle_chart,
    "indicator_panels": _check_indicator_panels,
    "trading_chart": _check_trading_chart,
}


@pytest.mark.parametrize("chart", sorted(_CHECKS))
def test_every_registered_indicator_is_drawn(bars, toys, chart):
    """Read at test time: an indicator registered later (or here, the toys) is covered too."""
    names = sorted(reg.REGISTRY)
    assert {"toy_mid", "toy_osc", "sma", "rsi", "macd", "dmi"} <= set(names)
    for name in names:
        _CHECKS[chart](bars, name)


def test_unknown_indicators_are_named_with_the_known_ones(bars):
    calls = (
        lambda: charts.candle_chart(bars, indicators=("rsi", "vwap")),
        lambda: charts.indicator_panels(bars, indicators=("vwap",)),
        lambda: charts.trading_chart(bars, overlays=("bb", "vwap")),
    )
    for call in calls:
        with pytest.raises(ValueError, match=r"unknown indicator\(s\) \['vwap'\]") as error:
            call()
        assert all(name in str(error.value) for name in reg.REGISTRY)
        assert "'adx' for 'dmi'" in str(error.value)
    with pytest.raises(ValueError, match="length"):  # bad arguments: a ValueError too
        charts.candle_chart(bars, indicators={"rsi": (0,)})


def test_toy_indicators_are_drawn_without_touching_the_charts(bars, toys):
    import matplotlib.pyplot as plt

    fig = charts.candle_chart(bars, n_bars=80, indicators=("toy_mid", "rsi", "toy_osc"))
    try:
        axes = fig.get_axes()
        assert "toy_mid_10" in _mpl_labels(axes[0])  # the overlay on the price panel
        assert "toy_mid_10" in [t.get_text() for t in axes[0].get_legend().get_texts()]
        titles = [ax.get_ylabel() for ax in axes if ax.get_ylabel()]
        # price, volume, then one panel each, in the order asked for
        assert titles[2:] == ["RSI", "Toy oscillator"]
        panel = next(ax for ax in axes if ax.get_ylabel() == "Toy oscillator")
        assert {"toy_line_10", "toy_bar_10"} <= _mpl_labels(panel)
        assert [c.get_label() for c in panel.containers] == ["toy_bar_10"]  # the histogram
        assert [line.get_ydata()[0] for line in panel.lines if line.get_linestyle() == "--"] == [
            0.0
        ]
    finally:
        plt.close(fig)

    frame = reg.compute_frame(bars, ["toy_mid", "toy_osc"])
    spec = charts.indicator_panels(frame, indicators=("toy_osc", "toy_mid"), n_bars=100).to_dict()
    price, panel = spec["vconcat"]
    assert {"close", "toy_mid_10"} <= _spec_fields(price)
    marks = [layer["mark"]["type"] for layer in panel["layer"]]
    assert marks == ["bar", "line", "rule"]  # histogram, lines, the zero level
    assert panel["layer"][0]["encoding"]["y"]["field"] == "toy_bar_10"
    assert panel["layer"][1]["transform"][0]["fold"] == ["toy_line_10"]

    spec = charts.trading_chart(bars, overlays=("toy_mid", "toy_osc"), n_bars=60).to_dict()
    assert "toy_mid_10" in _spec_fields(spec["vconcat"][0])
    assert {"toy_line_10", "toy_bar_10"} <= _spec_fields(spec["vconcat"][1])
    assert spec["params"][0]["bind"] == "scales"  # zoom on the price panel
    assert spec["resolve"]["scale"]["x"] == "shared"  # ... moves the panels too


def test_chart_indicator_arguments(bars):
    import matplotlib.pyplot as plt

    # "adx" is the dmi indicator (older calls and notebooks), with IndicatorParams' arguments
    params = reg.IndicatorParams(rsi_length=7, di_length=10, adx_smoothing=10)
    fig = charts.candle_chart(bars, n_bars=60, indicators=("adx", "rsi"), indicator_params=params)
    try:
        labels = set().union(*(_mpl_labels(ax) for ax in fig.get_axes()))
        assert {"adx_10", "plus_di_10", "minus_di_10", "rsi_7"} <= labels
    finally:
        plt.close(fig)
    # explicit arguments: a mapping or IndicatorRequests; a column name with a dot
    requests = (reg.IndicatorRequest("bb", (20, 2.5)), reg.IndicatorRequest("sma", (10,)))
    spec = charts.trading_chart(bars, overlays=requests, n_bars=60).to_dict()
    assert {"bb_upper_20_2.5", "bb_basis_20_2.5", "bb_lower_20_2.5", "sma_10"} <= _spec_fields(spec)
    line = next(layer for layer in spec["layer"] if "transform" in layer)
    assert "bb_upper_20_2\\.5" in line["transform"][0]["fold"]  # escaped: not a nested field
    assert "bb_upper_20_2.5" in line["encoding"]["color"]["scale"]["domain"]
    frame = reg.compute_frame(bars, [reg.IndicatorRequest("stoch", (5, 1, 3))])
    spec = charts.indicator_panels(frame, indicators={"stoch": (5, 1, 3)}).to_dict()
    assert {"stoch_k_5_1_3", "stoch_d_5_1_3"} <= _spec_fields(spec["vconcat"][1])
    # columns already in the frame are used as they are, missing ones computed on all of it
    fig = charts.candle_chart(frame, n_bars=60, indicators={"stoch": (5, 1, 3), "ema": (8,)})
    try:
        labels = _mpl_labels(fig.get_axes()[0])
        assert "ema_8" in labels and "stoch_k_5_1_3" not in labels
    finally:
        plt.close(fig)


def _x_axes(node):
    """Every axis definition of a ``ts`` x encoding in a chart spec."""
    if isinstance(node, dict):
        x = node.get("encoding", {}).get("x") if isinstance(node.get("encoding"), dict) else None
        own = [x["axis"]] if isinstance(x, dict) and x.get("field") == "ts" and "axis" in x else []
        return own + [a for k, v in node.items() if k != "encoding" for a in _x_axes(v)]
    if isinstance(node, list):
        return [a for v in node for a in _x_axes(v)]
    return []


def test_time_axes_keep_labels_apart(sample):
    # notebook 04 showed "Sep 17October": Vega's mixed default formats, labels touching
    axis = charts.time_axis(900).to_dict()
    assert axis["labelOverlap"] == "greedy" and axis["labelSeparation"] >= 8
    assert axis["tickCount"] == 9 and axis["labelAngle"] == 0
    # one short format per tick granularity: times of day, day ticks, new years
    assert "'%H:%M'" in axis["labelExpr"] and "'%b %d'" in axis["labelExpr"]
    assert "'%Y'" in axis["labelExpr"] and "%B" not in axis["labelExpr"]
    equity = sample.select("ts", pl.col("close").alias("equity"))
    built = [
        charts.trading_chart(sample, n_bars=200, overlays=("ema", "rsi")),
        charts.price_chart(sample),
        charts.equity_curves_chart({"close": equity}, width=500),
        charts.indicator_panels(reg.add_indicators(sample), indicators=("ema", "rsi"), n_bars=200),
    ]
    for chart in built:
        axes = _x_axes(chart.to_dict())
        assert axes, chart
        assert all(a["labelOverlap"] == "greedy" and "labelExpr" in a for a in axes)
    assert _x_axes(built[2].to_dict())[0]["tickCount"] == 5  # about one per 100 px


def test_candle_chart_size_for_a_side_by_side_comparison(sample):
    import matplotlib.pyplot as plt

    # notebook 02 shows it beside a square model image: a square figure fills the same cell
    fig = charts.candle_chart(sample, n_bars=64, mav=(20,), figsize=(6.4, 6.4))
    assert tuple(fig.get_size_inches()) == (6.4, 6.4)
    axes = fig.get_axes()
    labels = [t for t in axes[0].get_yticklabels() if t.get_text()]
    image = charts.figure_to_array(fig, dpi=100)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    # the whole chart, the price labels right of the axes included (a plain save crops them)
    height, width = image.shape[:2]
    assert 600 <= height <= 760 and 600 <= width <= 760
    extent = max(t.get_window_extent().x1 for t in labels)
    assert extent > fig.get_size_inches()[0] * fig.dpi  # they lie outside the figure box
    default = charts.candle_chart(sample, n_bars=64)
    assert tuple(default.get_size_inches()) == (11, 5.5)
    plt.close(default)


def test_image_grid_draws_differences_on_one_diverging_range():
    import matplotlib.pyplot as plt

    rgb = np.full((4, 4, 3), 255, dtype=np.uint8)
    small, large = np.full((4, 4), 2.0), np.full((4, 4), -8.0)
    fig = charts.image_grid(
        [small, large, rgb], ["a", "b", "c"], ncols=3, colorbar="ink difference"
    )
    axes = fig.get_axes()
    planes = [ax.get_images()[0] for ax in axes[:2]]
    # both panels on ±8 (the largest difference), red above zero and blue below
    assert [p.get_clim() for p in planes] == [(-8.0, 8.0), (-8.0, 8.0)]
    assert planes[0].get_cmap().name == "RdBu_r"
    assert axes[2].get_images()[0].get_array().shape == (4, 4, 3)  # RGB as it is
    assert axes[-1].get_ylabel() == "ink difference"  # the colour bar
    plt.close(fig)
    fig = charts.image_grid([small], limit=4.0, cmap="PuOr")
    image = fig.get_axes()[0].get_images()[0]
    assert image.get_clim() == (-4.0, 4.0) and image.get_cmap().name == "PuOr"
    plt.close(fig)
    with pytest.raises(ValueError, match="no images"):
        charts.image_grid([])
