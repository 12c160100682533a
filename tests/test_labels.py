"""Forward-return and triple-barrier labels: definitions, tails, the numba walk against a reference."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.indicators import atr
from aiopt_lib.features.labels import (
    CLASSES,
    LABEL_DTYPE,
    ForwardReturnParams,
    TripleBarrierParams,
    _triple_barrier_kernel,
    class_balance,
    forward_return_labels,
    triple_barrier_labels,
)
from aiopt_lib.features.lookahead import LookaheadError, check_no_lookahead
from aiopt_lib.features.splits import purged_split

T0 = dt.datetime(2021, 3, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return load_sample()


def _bars(rows: list[tuple[float, float, float, float]]) -> pl.DataFrame:
    """Hourly canonical bars from (open, high, low, close) rows."""
    o, h, lo, c = (list(x) for x in zip(*rows, strict=True))
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(
                T0, T0 + dt.timedelta(hours=len(rows) - 1), "1h", eager=True, time_zone="UTC"
            ),
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": [1.0] * len(rows),
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def _null_rows(frame: pl.DataFrame, column: str = "label") -> list[int]:
    return frame.get_column(column).is_null().arg_true().to_list()


def _atr14(bars: pl.DataFrame) -> np.ndarray:
    return atr(bars["high"].to_numpy(), bars["low"].to_numpy(), bars["close"].to_numpy(), 14)


# --- classes ----------------------------------------------------------------------------------


def test_class_order_is_buy_sell_hold() -> None:
    assert CLASSES == ("BUY", "SELL", "HOLD")
    codes = pl.Series(["HOLD", "BUY", "SELL"], dtype=LABEL_DTYPE).to_physical().to_list()
    assert codes == [2, 0, 1]


# --- forward-return labels --------------------------------------------------------------------


def test_forward_return_labels_on_the_sample(sample: pl.DataFrame) -> None:
    h = 12
    labels = forward_return_labels(sample, ForwardReturnParams(horizon=h, threshold=0.001))
    n = sample.height
    assert labels.height == n
    assert labels["ts"].equals(sample["ts"])
    assert labels["label"].dtype == LABEL_DTYPE
    # nulls exactly at the tail: the last h bars have no complete future
    assert _null_rows(labels) == list(range(n - h, n))
    assert _null_rows(labels, "label_end_ts") == list(range(n - h, n))
    assert set(labels["label"].drop_nulls().unique().to_list()) == set(CLASSES)
    known = labels.head(n - h)
    assert (known["label_end_ts"] >= known["ts"]).all()
    assert known["label_end_ts"].equals(sample["ts"].slice(h).alias("label_end_ts"))
    # entry at the next open, exit at the close h bars on
    opens, closes = sample["open"].to_numpy(), sample["close"].to_numpy()
    expected = closes[h:] / opens[1 : n - h + 1] - 1.0
    np.testing.assert_allclose(known["fwd_return"].to_numpy(), expected, rtol=0, atol=1e-15)
    want = np.where(expected > 0.001, "BUY", np.where(expected < -0.001, "SELL", "HOLD"))
    assert known["label"].cast(pl.String).to_list() == want.tolist()


def test_forward_return_entry_at_close(sample: pl.DataFrame) -> None:
    h = 5
    labels = forward_return_labels(sample, ForwardReturnParams(horizon=h, entry="close"))
    closes = sample["close"].to_numpy()
    np.testing.assert_allclose(
        labels["fwd_return"].head(sample.height - h).to_numpy(), closes[h:] / closes[:-h] - 1.0
    )
    assert labels["entry_price"].head(3).to_list() == sample["close"].head(3).to_list()


def test_forward_return_atr_scaled_threshold(sample: pl.DataFrame) -> None:
    h, k = 12, 1.5
    labels = forward_return_labels(sample, ForwardReturnParams(horizon=h, atr_multiple=k))
    n = sample.height
    atr_t = _atr14(sample)
    warmup = int(np.isnan(atr_t).sum())
    assert warmup == 13
    # null where ATR_t is unknown (head) or the future is incomplete (tail), nowhere else
    assert _null_rows(labels) == [*range(warmup), *range(n - h, n)]
    known = labels.slice(warmup, n - h - warmup)
    expected = k * atr_t[warmup : n - h] / sample["close"].to_numpy()[warmup : n - h]
    np.testing.assert_allclose(known["threshold"].to_numpy(), expected, rtol=1e-15)
    r, thr = known["fwd_return"].to_numpy(), known["threshold"].to_numpy()
    want = np.where(r > thr, "BUY", np.where(r < -thr, "SELL", "HOLD"))
    assert known["label"].cast(pl.String).to_list() == want.tolist()
    assert set(want.tolist()) == set(CLASSES)


# --- triple-barrier labels: hand-made paths ---------------------------------------------------

# With atr_length=1, ATR_0 is bar 0's high - low = 0.02; tp = sl = 1 puts the barriers at
# entry +- 0.02 with the entry at bar 1's open, 1.00.
FLAT = (1.00, 1.005, 0.995, 1.00)


def _first_label(rows, **kw) -> dict:
    params = TripleBarrierParams(horizon=3, take_profit=1.0, stop_loss=1.0, atr_length=1, **kw)
    return triple_barrier_labels(_bars(rows), params).row(0, named=True)


def test_first_touch_decides() -> None:
    up = _first_label([(1.0, 1.01, 0.99, 1.0), FLAT, (1.0, 1.021, 0.999, 1.02), FLAT, FLAT])
    assert (up["label"], up["barrier"], up["touch_index"]) == ("BUY", "upper", 2)
    assert up["entry_price"] == 1.0
    assert up["upper_barrier"] == pytest.approx(1.02)
    assert up["exit_price"] == up["upper_barrier"]
    assert up["label_end_ts"] == up["touch_ts"] == T0 + dt.timedelta(hours=2)
    down = _first_label([(1.0, 1.01, 0.99, 1.0), FLAT, FLAT, (1.0, 1.0, 0.975, 0.98), FLAT])
    assert (down["label"], down["barrier"], down["touch_index"]) == ("SELL", "lower", 3)
    assert down["ret"] == pytest.approx(-0.02)


def test_gap_through_a_barrier_fills_at_the_open() -> None:
    row = _first_label([(1.0, 1.01, 0.99, 1.0), FLAT, (1.05, 1.06, 1.04, 1.05), FLAT, FLAT])
    assert (row["label"], row["barrier"], row["touch_index"]) == ("BUY", "upper", 2)
    assert row["exit_price"] == 1.05
    assert row["ret"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("ambiguous", "high", "label", "barrier", "exit_price"),
    [
        ("hold", 1.025, "HOLD", "both", 1.001),
        ("stop_first", 1.025, "SELL", "lower", 0.98),
        # high nearer the open than the low: open -> high -> low -> close, upper first
        ("intrabar_path", 1.025, "BUY", "upper", 1.02),
        # low nearer (or a tie): open -> low -> high -> close, lower first
        ("intrabar_path", 1.035, "SELL", "lower", 0.98),
        ("intrabar_path", 1.03, "SELL", "lower", 0.98),
    ],
)
def test_a_bar_crossing_both_barriers(ambiguous, high, label, barrier, exit_price) -> None:
    both = (1.0, high, 0.97, 1.001)
    row = _first_label([(1.0, 1.01, 0.99, 1.0), FLAT, both, FLAT, FLAT], ambiguous=ambiguous)
    assert (row["label"], row["barrier"], row["touch_index"]) == (label, barrier, 2)
    assert row["exit_price"] == pytest.approx(exit_price)


@pytest.mark.parametrize(
    ("time_label", "min_return", "label"),
    [("hold", 0.0, "HOLD"), ("sign", 0.0, "BUY"), ("sign", 0.005, "BUY"), ("sign", 0.02, "HOLD")],
)
def test_time_barrier(time_label, min_return, label) -> None:
    rows = [(1.0, 1.01, 0.99, 1.0), FLAT, FLAT, (1.0, 1.012, 0.999, 1.01), FLAT]
    row = _first_label(rows, time_label=time_label, min_return=min_return)
    assert (row["label"], row["barrier"], row["touch_index"]) == (label, "time", 3)
    assert row["exit_price"] == 1.01


def test_entry_at_close_uses_bar_t() -> None:
    rows = [(1.0, 1.01, 0.99, 1.005), (1.0, 1.006, 0.99, 1.0), FLAT, FLAT, FLAT]
    row = _first_label(rows, entry="close")
    assert row["entry_price"] == 1.005
    assert row["upper_barrier"] == pytest.approx(1.025)
    assert row["barrier"] == "time"


# --- triple-barrier labels: the numba walk against a plain Python reference ------------------


def _reference(o, h, lo, c, a, horizon, tp, sl, next_open, ambiguous, time_sign, min_return):
    """The triple-barrier walk written out plainly, one bar at a time."""
    n = len(c)
    out = []
    for t in range(n):
        if t + horizon >= n or math.isnan(a[t]):
            out.append(None)
            continue
        entry = o[t + 1] if next_open else c[t]
        upper, lower = entry + tp * a[t], entry - sl * a[t]
        result = None
        for j in range(t + 1, t + horizon + 1):
            if o[j] >= upper:
                result = ("BUY", "upper", j, o[j])
            elif o[j] <= lower:
                result = ("SELL", "lower", j, o[j])
            elif h[j] >= upper and lo[j] <= lower:
                if ambiguous == "hold":
                    result = ("HOLD", "both", j, c[j])
                elif ambiguous == "stop_first":
                    result = ("SELL", "lower", j, lower)
                else:
                    high_first = (h[j] - o[j]) < (o[j] - lo[j])
                    result = (
                        ("BUY", "upper", j, upper) if high_first else ("SELL", "lower", j, lower)
                    )
            elif h[j] >= upper:
                result = ("BUY", "upper", j, upper)
            elif lo[j] <= lower:
                result = ("SELL", "lower", j, lower)
            if result is not None:
                break
        if result is None:
            j = t + horizon
            r = c[j] / entry - 1.0
            name = "HOLD"
            if time_sign and r > min_return:
                name = "BUY"
            elif time_sign and r < -min_return:
                name = "SELL"
            result = (name, "time", j, c[j])
        out.append((*result, entry, upper, lower))
    return out


def _random_bars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    close = 1.1 + np.cumsum(rng.normal(0, 0.002, n))
    gap = np.where(rng.random(n) < 0.15, rng.normal(0, 0.004, n), 0.0)  # frequent gaps
    open_ = np.concatenate([[close[0]], close[:-1]]) + gap
    wick = np.abs(rng.normal(0, 0.002, (2, n)))
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    return open_, high, low, close


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_matches_the_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    o, h, lo, c = _random_bars(rng, n)
    a = rng.uniform(0.0005, 0.004, n)
    a[: rng.integers(0, 20)] = np.nan  # a warm-up
    a[rng.random(n) < 0.03] = np.nan  # and holes
    seen = set()
    for horizon in (1, 5, 20):
        for next_open in (True, False):
            for ambiguous, code in (("hold", 0), ("stop_first", 1), ("intrabar_path", 2)):
                for time_sign in (False, True):
                    tp, sl = rng.uniform(0.3, 3.0, 2)
                    min_return = float(rng.choice([0.0, 0.001]))
                    got = _triple_barrier_kernel(
                        o, h, lo, c, a, horizon, tp, sl, next_open, code, time_sign, min_return
                    )
                    want = _reference(
                        o, h, lo, c, a, horizon, tp, sl, next_open, ambiguous, time_sign, min_return
                    )
                    label, barrier, touch, entry, upper, lower, exit_price = got
                    for t, expected in enumerate(want):
                        if expected is None:
                            assert label[t] == -1 and touch[t] == -1 and np.isnan(entry[t])
                            continue
                        name, hit, j, price, e, u, d = expected
                        assert CLASSES[label[t]] == name, (t, expected)
                        assert ("upper", "lower", "time", "both")[barrier[t]] == hit
                        assert touch[t] == j
                        assert exit_price[t] == price
                        assert (entry[t], upper[t], lower[t]) == (e, u, d)
                        seen.add(hit)
    # the random paths exercised every kind of outcome
    assert seen == {"upper", "lower", "time", "both"}


def test_public_function_matches_the_reference(sample: pl.DataFrame) -> None:
    bars = sample.head(1500)
    params = TripleBarrierParams(
        horizon=10, take_profit=1.0, stop_loss=1.5, ambiguous="intrabar_path"
    )
    labels = triple_barrier_labels(bars, params)
    want = _reference(
        *(bars[c].to_numpy() for c in ("open", "high", "low", "close")),
        _atr14(bars),
        10,
        1.0,
        1.5,
        True,
        "intrabar_path",
        False,
        0.0,
    )
    got = labels.select("label", "barrier", "touch_index", "exit_price").rows()
    for (label, barrier, touch, price), expected in zip(got, want, strict=True):
        if expected is None:
            assert (label, barrier, touch, price) == (None, None, None, None)
        else:
            assert (label, barrier, touch, price) == expected[:4]


# --- triple-barrier labels on the real sample -------------------------------------------------


def test_triple_barrier_labels_on_the_sample(sample: pl.DataFrame) -> None:
    h = 24
    labels = triple_barrier_labels(sample, TripleBarrierParams(horizon=h))
    n = sample.height
    assert labels.height == n and labels["ts"].equals(sample["ts"])
    assert _null_rows(labels) == [*range(13), *range(n - h, n)]  # ATR warm-up and the tail
    for column in ("label_end_ts", "touch_index", "barrier", "entry_price", "ret"):
        assert _null_rows(labels, column) == _null_rows(labels)
    known = labels.drop_nulls("label")
    assert set(known["label"].unique().to_list()) == set(CLASSES)
    assert (known["label_end_ts"] > known["ts"]).all()
    assert known["label_end_ts"].equals(known["touch_ts"].alias("label_end_ts"))
    index = pl.int_range(n, eager=True).filter(labels["label"].is_not_null())
    touch = known["touch_index"]
    assert ((touch >= index + 1) & (touch <= index + h)).all()
    assert known["label_end_ts"].equals(sample["ts"].gather(touch).alias("label_end_ts"))
    # label and barrier agree; exits lie at or beyond the barrier they touched
    pairs = set(
        known.select(pl.col("label").cast(pl.String), pl.col("barrier").cast(pl.String)).rows()
    )
    assert pairs <= {("BUY", "upper"), ("SELL", "lower"), ("HOLD", "time"), ("HOLD", "both")}
    ups = known.filter(pl.col("barrier") == "upper")
    downs = known.filter(pl.col("barrier") == "lower")
    assert (ups["exit_price"] >= ups["upper_barrier"]).all()
    assert (downs["exit_price"] <= downs["lower_barrier"]).all()
    # entry at the next open; barriers at +- 2 ATR_t
    first = known.row(0, named=True)
    assert first["entry_price"] == sample["open"][14]
    width = _atr14(sample)[13] * 2.0
    assert first["upper_barrier"] == pytest.approx(first["entry_price"] + width, rel=1e-12)


def test_labels_look_ahead_and_the_checker_catches_them(sample: pl.DataFrame) -> None:
    for fn, horizon in (
        (lambda b: forward_return_labels(b, ForwardReturnParams(horizon=6)), 6),
        (lambda b: triple_barrier_labels(b, TripleBarrierParams(horizon=6)), 6),
    ):
        with pytest.raises(LookaheadError) as caught:
            check_no_lookahead(fn, sample, n_cuts=4)
        report = caught.value.report
        assert "label" in report.leaky_columns
        assert "label_end_ts" in report.leaky_columns
        assert "ts" not in report.leaky_columns
        # every change is at a bar within a horizon before the cut of its trial
        for violation in report.violations:
            assert violation.cut - horizon <= violation.index < violation.cut


# --- class balance ----------------------------------------------------------------------------


def test_class_balance(sample: pl.DataFrame) -> None:
    labels = forward_return_labels(sample, ForwardReturnParams(horizon=12, threshold=0.001))
    table = class_balance(labels)
    assert table["class"].cast(pl.String).to_list() == list(CLASSES)
    assert table["count"].sum() == sample.height - 12
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["unlabeled"].to_list() == [12, 12, 12]
    counts = labels["label"].drop_nulls().cast(pl.String).value_counts()
    assert dict(table.select(pl.col("class").cast(pl.String), "count").rows()) == dict(
        counts.rows()
    )

    # a class that never occurs is listed with 0
    only_buy = pl.Series("label", ["BUY", "BUY", None], dtype=LABEL_DTYPE)
    table = class_balance(only_buy)
    assert table["count"].to_list() == [2, 0, 0]
    assert table["share"].to_list() == [1.0, 0.0, 0.0]

    samples = labels.drop_nulls("label")
    split = purged_split(samples, embargo=0)
    per_part = class_balance(samples, split=split)
    assert per_part["part"].unique(maintain_order=True).to_list() == ["train", "validation", "test"]
    totals = per_part.group_by("part", maintain_order=True).agg(pl.col("count").sum())
    assert totals["count"].to_list() == [len(split.train), len(split.validation), len(split.test)]
    for part in ("train", "validation", "test"):
        shares = per_part.filter(pl.col("part") == part)["share"]
        assert shares.sum() == pytest.approx(1.0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="horizon"):
        ForwardReturnParams(horizon=0)
    with pytest.raises(ConfigError, match="entry"):
        ForwardReturnParams(entry="open")
    with pytest.raises(ConfigError, match="threshold"):
        ForwardReturnParams(threshold=-0.1)
    with pytest.raises(ConfigError, match="take_profit"):
        TripleBarrierParams(take_profit=0.0)
    with pytest.raises(ConfigError, match="ambiguous"):
        TripleBarrierParams(ambiguous="guess")
    with pytest.raises(ConfigError, match="time_label"):
        TripleBarrierParams(time_label="maybe")
