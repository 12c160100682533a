import datetime as dt

import matplotlib
import polars as pl
import pytest

from aiopt_lib.core.bars import TS_DTYPE
from aiopt_lib.data.cleaning import classify_gaps
from aiopt_lib.data.explore import describe_bars, hour_of_week_profile, pip_size
from aiopt_lib.data.sources import load_sample
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
    from aiopt_lib.features.indicators import add_indicators
    from aiopt_lib.features.labels import class_balance, triple_barrier_labels

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
