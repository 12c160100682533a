"""The one table style of the reports (aiopt_lib.viz.tables), the answer block and the report
display settings (aiopt_lib.viz.report), and the answers and tables they show."""

from __future__ import annotations

import datetime as dt
import re

import polars as pl
import pytest

import aiopt_lib as ai
from aiopt_lib.strategy import search
from aiopt_lib.viz import report, tables

UTC = dt.UTC


def body(html: str) -> str:
    """The table's rows as text: tags and the style block dropped."""
    html = re.sub(r"<style.*?</style>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def trades() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "entry_ts": [dt.datetime(2017, 1, 4, 10, 0, 0, 1, tzinfo=UTC)] * 2,
            "side": ["long", "short"],
            "entry_price": [1.0438612345, 1.05],
            "pnl": [1234.5, -50.25],
            "total_return": [0.01234, -0.0005],
            "sharpe": [4.11234, -1.5],
            "tiny": [0.000123, 0.000456],
            "bars_held": [12, 3],
            "commissions": [["2.50 USD"], ["2.50 USD", "1.00 USD"]],
            "flag": [True, False],
            "missing": [None, 1.5],
        }
    )


def test_table_formats_by_dtype_and_name(trades) -> None:
    text = body(ai.table(trades).as_raw_html())
    assert "2017-01-04 10:00 " in text and "00.000001" not in text  # to the minute
    assert "1.04386" in text  # prices to 5 decimals
    assert "1.23%" in text and "−0.05%" in text.replace("-", "−")  # returns as percentages
    assert "4.11" in text and "4.112" not in text  # ratios around 1: 2 decimals
    assert "0.0001" in text or "0.0002" in text  # small values: 4 decimals
    assert "2.50 USD, 1.00 USD" in text and "['" not in text  # lists joined
    assert " yes " in text and " no " in text
    assert "–" in text  # a missing value
    assert "shape:" not in text and "f64" not in text


def test_every_row_is_shown_and_nothing_is_fetched() -> None:
    frame = pl.DataFrame({"rank": list(range(1, 301)), "score": [i / 7 for i in range(300)]})
    html = ai.table(frame, title="All ranks").as_raw_html()
    assert "All ranks" in html
    assert all(f">{i}<" in html for i in (1, 150, 300))
    assert "…" not in body(html)
    assert not re.search(r"(src|href)=\"?https?://", html) and "@import" not in html


def test_explicit_formats_override_the_inferred_ones(trades) -> None:
    html = ai.table(
        trades.select("sharpe", "pnl"), percent=["sharpe"], money=["pnl"], labels={"pnl": "PnL"}
    ).as_raw_html()
    text = body(html)
    assert "411.23%" in text and "1,234.50" in text and " PnL " in text
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]"):
        ai.table(trades, percent=["nope"])


@pytest.mark.parametrize(
    ("values", "decimals"),
    [([1.23, 2.5], 2), ([0.35, 0.2], 3), ([0.0123], 4), ([0.00001], 4), ([12.3], 1), ([1234.0], 0)],
)
def test_decimals_follow_the_typical_magnitude(values, decimals) -> None:
    assert tables.decimals_for(pl.Series(values)) == decimals


def test_dates_alone_when_every_time_is_midnight() -> None:
    days = pl.DataFrame({"day": [dt.datetime(2017, m, 1, tzinfo=UTC) for m in (1, 2)]})
    shown, _ = tables.display_frame(days)
    assert shown["day"].to_list() == ["2017-01-01", "2017-02-01"]
    seconds = pl.DataFrame({"t": [dt.datetime(2017, 1, 1, 0, 0, 30, tzinfo=UTC)]})
    assert tables.display_frame(seconds)[0]["t"].to_list() == ["2017-01-01 00:00:30"]


def test_sortable_table_keeps_numbers_numeric_and_works_offline(trades) -> None:
    sortable = ai.sortable_table(trades, caption="Trades")
    frame = sortable.frame
    assert "total_return %" in frame.columns
    assert frame["total_return %"].to_list() == [1.23, -0.05]  # numbers: a click sorts by value
    assert frame["entry_price"].to_list() == [1.04386, 1.05]
    html = sortable.to_html()
    assert "Trades" in html and "itables" in html
    assert not re.search(r"<script[^>]+src=\"https?://", html)


def test_answer_block_escapes_and_needs_a_sentence() -> None:
    shown = report.answer("No: <b> lost 3.2%", "Second sentence.").data
    assert f'class="{report.ANSWER_CLASS}"' in shown
    assert "&lt;b&gt; lost 3.2%" in shown and "<b>Answer:</b>" in shown
    assert shown.count("<p ") == 2
    with pytest.raises(ValueError, match="at least one sentence"):
        report.answer("", "  ")


def test_report_display_hides_shape_and_dtypes() -> None:
    with pl.Config():
        report.configure_report_display(max_rows=50)
        html = pl.DataFrame({"a": list(range(40))})._repr_html_()
    assert "shape:" not in html and "i64" not in html and "…" not in html


def test_data_verdict_says_yes_for_the_clean_sample_and_names_unexpected_gaps() -> None:
    loaded = ai.load_bars_report("sample")
    sentence = ai.data_verdict(loaded.report, loaded.bars)
    assert sentence.startswith("Yes: 6,225 bars (1h) from 2017-01-01 to 2017-12-29")
    assert "52 gap(s) are expected" in sentence and "are not" not in sentence
    # a hole on a Wednesday is no market closure
    holed = loaded.bars.filter(
        ~pl.col("ts").is_between(
            dt.datetime(2017, 3, 8, 10, tzinfo=UTC), dt.datetime(2017, 3, 8, 15, tzinfo=UTC)
        )
    )
    sentence = ai.data_verdict(loaded.report, holed)
    assert sentence.startswith("With care:") and "1 are not" in sentence


def test_template_table_lists_rules_exits_params_and_constraints() -> None:
    template = search.builtin_template("ema_cross")
    shown = search.template_table(template)
    values = dict(shown.iter_rows())
    assert values["long entry"] == template.spec.long_entry
    assert values["stop-loss"] == "stop_atr × ATR(14)"
    assert values["param fast"] == "12 (searched: 3 to 40)"
    assert values["param slow"] == "26 (searched: 10 to 200 step 2)"
    assert values["constraints"] == "fast < slow"
    assert shown.height == 13 + len(template.space) + 1


def test_validation_view_counts_items_and_lists_problems_first() -> None:
    loaded = ai.load_bars_report("sample")
    shown = report.validation_view(loaded.report, max_items=5).data
    text = body(shown)
    assert loaded.report.headline() in text
    assert "Items by kind" in text and "First 5 of 52 item(s)" in text
    assert '"gap"' not in text and "shape:" not in text


def test_years_and_ranks_have_no_thousands_separator_counts_do() -> None:
    frame = pl.DataFrame({"year": [2017], "rank": [1], "bars": [6225], "volume": [54_982_158]})
    text = body(ai.table(frame).as_raw_html())
    assert " 2017 " in text and " 6225 " in text and " 54,982,158 " in text
