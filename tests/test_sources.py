"""Tests of aiopt_lib.data.sources: CSV/Parquet/frame readers, the embedded sample and load_bars."""

from __future__ import annotations

import datetime as dt
import re
import warnings
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from aiopt_lib.core.atomic import write_parquet_atomic
from aiopt_lib.core.bars import TICK_COLUMNS, TS_DTYPE, check_bars
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data.sources import (
    DEFAULT_SAMPLE,
    SourceWarning,
    build_sample,
    list_samples,
    load_bars,
    load_bars_report,
    load_sample,
    read_csv_source,
    read_frame_source,
    read_parquet_source,
    read_source,
    sample_metadata,
    sample_path,
    sniff_csv_format,
)

UTC = dt.UTC
SHIPPED_SAMPLE = Path(__file__).parents[1] / "aiopt_lib" / "data" / "eurusd_h1_2017.parquet"

# The first three data lines of tests/data/eurusd_h1/EURUSD_1H_ASK_2017.csv (Dukascopy export).
DUKASCOPY_LINES = (
    "01.01.2017 22:00:00.000,1.05236,1.05253,1.05221,1.05227,143539993.3\n"
    "01.01.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,253139999.4\n"
    "02.01.2017 00:00:00.000,1.05283,1.05283,1.05268,1.05281,131399993.9\n"
)
DUKASCOPY_CSV = "Time,Open,High,Low,Close,Volume\n" + DUKASCOPY_LINES
HISTDATA_CSV = (
    "20170102 170000;1.052360;1.052530;1.052210;1.052270;0\n"
    "20170102 170100;1.052270;1.052300;1.052200;1.052250;0\n"
)
MT4_CSV = (
    "2017.01.02,17:00,1.05236,1.05253,1.05221,1.05227,143\n"
    "2017.01.02,18:00,1.05227,1.05426,1.05226,1.05282,253\n"
)
MT5_CSV = (
    "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
    "2017.01.02\t22:00:00\t1.05236\t1.05253\t1.05221\t1.05227\t1435\t0\t12\n"
    "2017.01.02\t23:00:00\t1.05227\t1.05426\t1.05226\t1.0528\t2531\t0\t9\n"
)
GENERIC_CSV = (
    "timestamp,o,h,l,c,vol,comment\n"
    "2017-01-02T00:00:00+02:00,1.1,1.3,1.0,1.2,10,a\n"
    "2017-01-02 01:00:00Z,1.2,1.4,1.1,1.3,11,b\n"
    "2017-01-02T02:00:00.250+00:00,1.3,1.5,1.2,1.4,12,c\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def ts(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def quiet_read(path: Path, **kwargs: object):
    """read_csv_source with the expected time-zone / volume warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SourceWarning)
        return read_csv_source(path, **kwargs)


# ---------------------------------------------------------------------------------------------
# Sniffing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DUKASCOPY_CSV, "dukascopy_csv"),
        ("Gmt time,Open,High,Low,Close,Volume\n" + DUKASCOPY_LINES, "dukascopy_csv"),
        (HISTDATA_CSV, "histdata"),
        (MT4_CSV, "mt4"),
        (MT5_CSV, "mt5"),
        (GENERIC_CSV, "generic"),
        # Dukascopy's header but epoch times: the second line decides, so generic
        ("time,open,high,low,close,volume\n1483394400000,1,2,0.5,1.5,1\n", "generic"),
    ],
)
def test_sniff_recognises_each_format(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert sniff_csv_format(path) == expected
    assert quiet_read(path).format == expected


def test_sniff_real_sample_file(eurusd_h1_csv: Path) -> None:
    assert sniff_csv_format(eurusd_h1_csv) == "dukascopy_csv"


def test_headerless_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "odd.csv", "2017-01-02 00:00:00,1,2,0.5,1.5,1\n")
    with pytest.raises(DataError, match=r"odd\.csv, line 1: cannot recognise the CSV format"):
        read_csv_source(path)


# ---------------------------------------------------------------------------------------------
# Dukascopy CSV


def test_dukascopy_values_rows_and_utc(tmp_path: Path) -> None:
    raw = read_csv_source(write(tmp_path, "EURUSD_1H_ASK.csv", DUKASCOPY_CSV))
    frame = raw.frame
    assert frame.columns == ["ts", "open", "high", "low", "close", "volume", "row"]
    assert frame.schema["ts"] == TS_DTYPE
    assert frame.schema["row"] == pl.Int64
    assert frame.get_column("ts").to_list() == [
        ts(2017, 1, 1, 22),
        ts(2017, 1, 1, 23),
        ts(2017, 1, 2),
    ]
    assert frame.row(0) == (ts(2017, 1, 1, 22), 1.05236, 1.05253, 1.05221, 1.05227, 143539993.3, 2)
    assert frame.get_column("row").to_list() == [2, 3, 4]  # line numbers; line 1 is the header
    assert (raw.symbol, raw.side, raw.row_kind) == ("EURUSD", "ask", "line")


def test_dukascopy_local_time_offset_is_applied(tmp_path: Path) -> None:
    text = (
        "Local time,Open,High,Low,Close,Volume\n"
        "02.01.2017 00:00:00.000 GMT+0200,1.05236,1.05253,1.05221,1.05227,1.5\n"
        "02.07.2017 00:00:00.000 GMT+0300,1.1,1.2,1.0,1.15,2.5\n"
    )
    frame = read_csv_source(write(tmp_path, "local.csv", text)).frame
    assert frame.get_column("ts").to_list() == [ts(2017, 1, 1, 22), ts(2017, 7, 1, 21)]


def test_dukascopy_rows_keep_file_order(tmp_path: Path) -> None:
    lines = DUKASCOPY_LINES.splitlines()
    text = "Time,Open,High,Low,Close,Volume\n" + "\n".join([lines[2], lines[0], lines[0]]) + "\n"
    frame = read_csv_source(write(tmp_path, "unsorted.csv", text)).frame
    # not sorted, not de-duplicated: the cleaning stage does that and reports it
    assert frame.get_column("ts").to_list() == [
        ts(2017, 1, 2),
        ts(2017, 1, 1, 22),
        ts(2017, 1, 1, 22),
    ]
    assert frame.get_column("row").to_list() == [2, 3, 4]


# ---------------------------------------------------------------------------------------------
# HistData


def test_histdata_is_est_without_dst_plus_five_hours(tmp_path: Path) -> None:
    text = HISTDATA_CSV + "20170703 170000;1.1;1.2;1.0;1.15;0\n"  # July: still +5 h (no DST)
    raw = read_csv_source(write(tmp_path, "DAT_ASCII_EURUSD_M1_2017.csv", text))
    assert raw.format == "histdata"
    assert raw.symbol == "EURUSD"
    assert raw.frame.get_column("ts").to_list() == [
        ts(2017, 1, 2, 22),
        ts(2017, 1, 2, 22, 1),
        ts(2017, 7, 3, 22),
    ]
    assert raw.frame.row(0)[1:] == (1.05236, 1.05253, 1.05221, 1.05227, 0.0, 1)


def test_histdata_tz_override(tmp_path: Path) -> None:
    text = HISTDATA_CSV + "20170703 170000;1.1;1.2;1.0;1.15;0\n"
    path = write(tmp_path, "hd.csv", text)
    new_york = read_csv_source(path, tz="America/New_York").frame.get_column("ts")
    assert new_york[0] == ts(2017, 1, 2, 22)  # EST in winter
    assert new_york[2] == ts(2017, 7, 3, 21)  # EDT in summer
    utc = read_csv_source(path, tz="UTC").frame.get_column("ts")
    assert utc[0] == ts(2017, 1, 2, 17)
    fixed = read_csv_source(path, tz="+01:00").frame.get_column("ts")
    assert fixed[0] == ts(2017, 1, 2, 16)


@pytest.mark.parametrize(
    ("stamp", "what"),
    [("20170312 023000", "does not exist"), ("20171105 013000", "is ambiguous")],
)
def test_histdata_dst_gap_and_overlap_name_the_line(tmp_path: Path, stamp: str, what: str) -> None:
    text = HISTDATA_CSV + f"{stamp};1.1;1.2;1.0;1.15;0\n"
    path = write(tmp_path, "hd.csv", text)
    with pytest.raises(DataError, match=rf"hd\.csv, line 3, field 'ts': local time {what}") as info:
        read_csv_source(path, tz="America/New_York")
    assert info.value.row == 3


# ---------------------------------------------------------------------------------------------
# MetaTrader


def test_mt4_values_and_server_time_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "EURUSD60.csv", MT4_CSV)
    with pytest.warns(SourceWarning, match="broker's server time"):
        raw = read_csv_source(path)
    assert raw.format == "mt4"
    assert raw.frame.row(1) == (ts(2017, 1, 2, 18), 1.05227, 1.05426, 1.05226, 1.05282, 253.0, 2)


def test_mt4_with_tz_converts_and_does_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "EURUSD60.csv", MT4_CSV)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)
        frame = read_csv_source(path, tz="Europe/Helsinki").frame
    assert frame.get_column("ts")[0] == ts(2017, 1, 2, 15)  # EET = UTC+2 in January


def test_mt5_spread_in_price_units_and_tick_volume(tmp_path: Path) -> None:
    raw = quiet_read(write(tmp_path, "EURUSD_H1.csv", MT5_CSV))
    frame = raw.frame
    assert raw.format == "mt5"
    assert frame.get_column("ts").to_list() == [ts(2017, 1, 2, 22), ts(2017, 1, 2, 23)]
    # <VOL> is all zero: the volume is <TICKVOL>
    assert frame.get_column("volume").to_list() == [1435.0, 2531.0]
    # 5 decimals in the prices: a point is 0.00001
    assert frame.get_column("spread").to_list() == pytest.approx([0.00012, 0.00009])
    assert "<VOL>" in raw.ignored_columns


def test_mt5_jpy_real_volume_and_daily_without_time(tmp_path: Path) -> None:
    text = (
        "<DATE>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        "2017.01.02\t117.012\t117.500\t116.900\t117.3\t5000\t70\t15\n"
        "2017.01.03\t117.300\t118.600\t117.100\t118.2\t5200\t0\t20\n"
    )
    frame = quiet_read(write(tmp_path, "USDJPY_D1.csv", text), tz="UTC").frame
    assert frame.get_column("ts").to_list() == [ts(2017, 1, 2), ts(2017, 1, 3)]
    assert frame.get_column("volume").to_list() == [70.0, 0.0]  # <VOL> has real volume
    assert frame.get_column("spread").to_list() == pytest.approx([0.015, 0.020])


# ---------------------------------------------------------------------------------------------
# Generic CSV


def test_generic_iso_with_offsets_and_aliases(tmp_path: Path) -> None:
    raw = read_csv_source(write(tmp_path, "gen.csv", GENERIC_CSV))
    frame = raw.frame
    assert frame.get_column("ts").to_list() == [
        ts(2017, 1, 1, 22),  # +02:00
        ts(2017, 1, 2, 1),  # Z
        dt.datetime(2017, 1, 2, 2, 0, 0, 250000, tzinfo=UTC),  # +00:00
    ]
    assert frame.row(0)[1:] == (1.1, 1.3, 1.0, 1.2, 10.0, 2)
    assert raw.ignored_columns == ("comment",)


def test_generic_naive_times_use_tz(tmp_path: Path) -> None:
    text = "datetime,open,high,low,close,volume\n2017-06-01 12:00:00,1,2,0.5,1.5,1\n"
    frame = read_csv_source(write(tmp_path, "g.csv", text), tz="Europe/Berlin").frame
    assert frame.get_column("ts")[0] == ts(2017, 6, 1, 10)


def test_generic_epoch_milliseconds_and_seconds_agree(tmp_path: Path) -> None:
    ms = write(tmp_path, "ms.csv", "time,open,high,low,close,volume\n1483394400000,1,2,0.5,1.5,1\n")
    s = write(tmp_path, "s.csv", "ts;open;high;low;close;volume\n1483394400;1;2;0.5;1.5;1\n")
    assert read_csv_source(ms).frame.get_column("ts")[0] == ts(2017, 1, 2, 22)
    assert read_csv_source(s).frame.get_column("ts")[0] == ts(2017, 1, 2, 22)


def test_generic_date_time_pair_and_missing_volume(tmp_path: Path) -> None:
    text = "Date,Time,Open,High,Low,Close\n2017-01-02,22:00,1,2,0.5,1.5\n"
    with pytest.warns(SourceWarning, match="no volume column"):
        frame = read_csv_source(write(tmp_path, "pair.csv", text)).frame
    assert frame.get_column("ts")[0] == ts(2017, 1, 2, 22)
    assert frame.get_column("volume").to_list() == [0.0]


def test_generic_keeps_bid_ask_and_spread_columns(tmp_path: Path) -> None:
    text = (
        "ts,open,high,low,close,volume,bid_open,bid_high,bid_low,bid_close,"
        "ask_open,ask_high,ask_low,ask_close,spread\n"
        "2017-01-02T22:00:00Z,1,2,0.5,1.5,3,1,2,0.5,1.5,1.1,2.1,0.6,1.6,0.1\n"
    )
    frame = read_csv_source(write(tmp_path, "both.csv", text)).frame
    assert frame.get_column("ask_close").to_list() == [1.6]
    assert frame.get_column("spread").to_list() == [0.1]
    assert check_bars(frame.drop("row")) == []


def test_column_mapping_overrides_sniffing(tmp_path: Path) -> None:
    text = "Gmt time;O;Hi;Lo;Last;Ticks;Vol\n02.01.2017 22:00:00.000;1.1;1.3;1.0;1.2;7;99\n"
    path = write(tmp_path, "mapped.csv", text)
    raw = read_csv_source(
        path,
        columns={
            "ts": "Gmt time",
            "open": "O",
            "high": "Hi",
            "low": "Lo",
            "close": "Last",
            "volume": "Ticks",
        },
    )
    assert raw.format == "generic"
    assert raw.frame.row(0) == (ts(2017, 1, 2, 22), 1.1, 1.3, 1.0, 1.2, 7.0, 2)
    assert raw.ignored_columns == ("Vol",)
    with pytest.raises(ConfigError, match="'Nope' is not a column"):
        read_csv_source(path, columns={"ts": "Nope"})


def test_explicit_format_and_time_format(tmp_path: Path) -> None:
    text = "time,open,high,low,close,volume\n02/01/2017 22:00,1,2,0.5,1.5,1\n"
    path = write(tmp_path, "custom.csv", text)
    with pytest.raises(DataError, match=r"line 2, field 'time': unrecognised timestamp format"):
        read_csv_source(path)
    frame = read_csv_source(path, format="generic", time_format="%d/%m/%Y %H:%M").frame
    assert frame.get_column("ts")[0] == ts(2017, 1, 2, 22)
    renamed = write(tmp_path, "renamed.csv", text.replace("time,", "when,"))
    with pytest.raises(DataError, match=r"line 1: no time column found"):
        read_csv_source(renamed)


def test_empty_numeric_field_is_null_for_the_cleaning(tmp_path: Path) -> None:
    text = "Time,Open,High,Low,Close,Volume\n01.01.2017 22:00:00.000,1.05236,,1.05221,1.05227,1\n"
    frame = read_csv_source(write(tmp_path, "hole.csv", text)).frame
    assert frame.get_column("high").to_list() == [None]


# ---------------------------------------------------------------------------------------------
# Bad input: every error names file, line and field


BAD_INPUTS = [
    (
        "number",
        DUKASCOPY_CSV + "02.01.2017 01:00:00.000,1.05,abc,1.04,1.05,1\n",
        r"line 5, field 'High': unparseable number \(got 'abc'\)",
    ),
    (
        "timestamp",
        DUKASCOPY_CSV + "2017-01-02 01:00,1.05,1.06,1.04,1.05,1\n",
        r"line 5, field 'Time': unparseable timestamp.*\(got '2017-01-02 01:00'\)",
    ),
    (
        "invalid date",
        DUKASCOPY_CSV + "31.02.2017 01:00:00.000,1.05,1.06,1.04,1.05,1\n",
        r"line 5, field 'Time': unparseable timestamp: not a valid date",
    ),
    (
        "too few fields",
        DUKASCOPY_CSV + "02.01.2017 01:00:00.000,1.05,1.06,1.04\n",
        r"line 5, field 'Close': missing field: the line has 4 field\(s\), expected 6",
    ),
    (
        "too many fields",
        DUKASCOPY_CSV + "02.01.2017 01:00:00.000,1.05,1.06,1.04,1.05,1,extra\n",
        r"line 5, field '#7': too many fields: the line has 7 fields, expected 6 .*\(got 'extra'\)",
    ),
    (
        "blank lines are counted",
        DUKASCOPY_CSV + "\n\n02.01.2017 01:00:00.000,1.05,1.06,x,1.05,1\n",
        r"line 7, field 'Low': unparseable number",
    ),
    (
        "histdata",
        HISTDATA_CSV + "20170102 170200;1.05;1.06;1.04\n",
        r"line 3, field 'close': missing field",
    ),
    (
        "mt4 time",
        MT4_CSV + "2017.01.02,25:00,1.05,1.06,1.04,1.05,1\n",
        r"line 3, field 'date time': unparseable timestamp: not a valid date",
    ),
]


@pytest.mark.parametrize(("case", "text", "pattern"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_rows_name_file_line_and_field(
    tmp_path: Path, case: str, text: str, pattern: str
) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError) as info:
        quiet_read(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line "), message
    assert re.search(pattern, message), message
    assert info.value.file == str(path)
    assert info.value.field is not None


def test_many_bad_rows_report_the_first_and_the_count(tmp_path: Path) -> None:
    text = DUKASCOPY_CSV + "02.01.2017 01:00:00.000,1,1,1,1,x\n02.01.2017 02:00:00.000,1,1,1,1,y\n"
    with pytest.raises(DataError, match=r"line 5, field 'Volume': unparseable number \(2 rows"):
        read_csv_source(write(tmp_path, "two.csv", text))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.csv", text)
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_csv_source(path)


def test_header_only_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "header.csv", "Time,Open,High,Low,Close,Volume\n")
    with pytest.raises(
        DataError, match=r"header\.csv, line 1: the file has a header but no data rows"
    ):
        read_csv_source(path)


def test_missing_price_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "noprice.csv", "time,open,high,close\n2017-01-02,1,2,1.5\n")
    with pytest.raises(DataError, match=r"line 1: no column found for \['low'\]"):
        read_csv_source(path)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(DUKASCOPY_CSV.encode() + b"02.01.2017 01:00:00.000,1,1,1,1,\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv, line 5: not UTF-8 text"):
        read_csv_source(path)


def test_utf16_and_crlf_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "mt5_utf16.csv"
    path.write_bytes(MT5_CSV.replace("\n", "\r\n").encode("utf-16"))
    frame = quiet_read(path).frame
    assert frame.height == 2
    assert frame.get_column("row").to_list() == [2, 3]


def test_unknown_tz_and_format_are_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", DUKASCOPY_CSV)
    with pytest.raises(ConfigError, match="unknown time zone"):
        read_csv_source(path, tz="Mars/Olympus")
    with pytest.raises(ConfigError, match="unknown CSV format"):
        read_csv_source(path, format="excel")


# ---------------------------------------------------------------------------------------------
# Embedded sample


def test_shipped_sample_equals_a_fresh_conversion(tmp_path: Path, eurusd_h1_csv: Path) -> None:
    fresh = build_sample(eurusd_h1_csv, tmp_path / "fresh.parquet")
    assert pl.read_parquet(fresh).equals(pl.read_parquet(SHIPPED_SAMPLE))
    assert pl.read_parquet_metadata(fresh) == pl.read_parquet_metadata(SHIPPED_SAMPLE)
    column = pq.ParquetFile(SHIPPED_SAMPLE).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"


def test_load_sample_is_canonical_and_documented() -> None:
    bars = load_sample()
    assert bars.height == 6225
    assert bars.columns == ["ts", "open", "high", "low", "close", "volume"]
    assert bars.schema["ts"] == TS_DTYPE
    assert check_bars(bars) == []  # sorted, unique, canonical dtypes
    assert bars.get_column("ts")[0] == ts(2017, 1, 1, 22)
    assert bars.get_column("ts")[-1] == ts(2017, 12, 29, 21)
    assert bars.row(0)[1:5] == (1.05236, 1.05253, 1.05221, 1.05227)


def test_sample_listing_and_metadata() -> None:
    assert DEFAULT_SAMPLE in list_samples()
    meta = sample_metadata()
    assert (meta["symbol"], meta["side"], meta["timeframe"]) == ("EURUSD", "ask", "1h")
    assert "gym-anytrading" in meta["source"]
    assert meta["licence"].startswith("MIT")
    assert sample_path() == sample_path(DEFAULT_SAMPLE)
    assert sample_path().name == f"{DEFAULT_SAMPLE}.parquet" and sample_path().is_file()
    with pytest.raises(ConfigError, match="unknown sample"):
        load_sample("nope")
    with pytest.raises(ConfigError, match="unknown sample 'nope'; available"):
        sample_path("nope")


def test_sample_files_ship_licence_and_readme() -> None:
    data = SHIPPED_SAMPLE.parent
    assert "MIT License" in (data / "LICENSE-eurusd_h1").read_text()
    readme = (data / "README.md").read_text()
    assert "6,225" in readme
    assert "ask" in readme


# ---------------------------------------------------------------------------------------------
# Parquet and in-memory frames


def test_parquet_round_trip(tmp_path: Path) -> None:
    bars = load_sample().head(50)
    path = write_parquet_atomic(
        bars, tmp_path / "bars.parquet", metadata={"symbol": "EURUSD", "side": "ask"}
    )
    raw = read_parquet_source(path)
    assert raw.format == "parquet"
    assert raw.row_kind == "row"
    assert raw.frame.get_column("row").to_list() == list(range(50))
    assert raw.frame.drop("row").equals(bars)
    assert (raw.symbol, raw.side) == ("EURUSD", "ask")


def test_parquet_naive_ts_is_utc_and_aliases_work(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "Date": [dt.datetime(2017, 1, 2, 22), dt.datetime(2017, 1, 2, 23)],
            "Open": [1.0, 1.1],
            "High": [1.2, 1.3],
            "Low": [0.9, 1.0],
            "Close": [1.1, 1.2],
            "Volume": [5, 6],
        }
    )
    path = tmp_path / "naive.parquet"
    frame.write_parquet(path)
    raw = read_parquet_source(path).frame
    assert raw.schema["ts"] == TS_DTYPE
    assert raw.get_column("ts").to_list() == [ts(2017, 1, 2, 22), ts(2017, 1, 2, 23)]
    assert raw.get_column("volume").to_list() == [5.0, 6.0]
    shifted = read_parquet_source(path, tz="+02:00").frame
    assert shifted.get_column("ts")[0] == ts(2017, 1, 2, 20)


def test_parquet_ticks_and_bad_values(tmp_path: Path) -> None:
    ticks = pl.DataFrame(
        {
            "ts": [ts(2019, 2, 4, 0, 0), ts(2019, 2, 4, 0, 0, 30)],
            "bid": [1.1, 1.2],
            "ask": [1.3, 1.4],
        }
    )
    path = tmp_path / "ticks.parquet"
    ticks.write_parquet(path)
    with pytest.warns(SourceWarning, match="no (bid|ask)_volume column"):
        raw = read_parquet_source(path)
    assert raw.is_ticks
    assert raw.frame.columns == list(TICK_COLUMNS)
    assert raw.frame.get_column("ask_volume").to_list() == [0.0, 0.0]
    bad = pl.DataFrame(
        {
            "ts": ["2017-01-02T22:00:00Z", "yesterday"],
            "open": [1.0, 1.0],
            "high": [1.0, 1.0],
            "low": [1.0, 1.0],
            "close": [1.0, 1.0],
        }
    )
    bad_path = tmp_path / "bad.parquet"
    bad.write_parquet(bad_path)
    with pytest.raises(DataError, match=r"bad\.parquet, row 1, field 'ts': unparseable timestamp"):
        read_parquet_source(bad_path)


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read Parquet file"):
        read_parquet_source(path)


def test_polars_and_pandas_frames(tmp_path: Path) -> None:
    bars = load_sample().head(5)
    raw = read_frame_source(bars)
    assert raw.frame.drop("row").equals(bars)
    assert raw.source == "<polars DataFrame>"
    pdf = bars.to_pandas().set_index("ts")
    raw_pd = read_frame_source(pdf)
    assert raw_pd.source == "<pandas DataFrame>"
    assert raw_pd.frame.drop("row").equals(bars)
    naive = pd.DataFrame(
        {"open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5]},
        index=pd.DatetimeIndex(["2017-01-02 22:00"], name="time"),
    )
    with pytest.warns(SourceWarning, match="no volume column"):
        frame = read_frame_source(naive).frame
    assert frame.get_column("ts")[0] == ts(2017, 1, 2, 22)


# ---------------------------------------------------------------------------------------------
# read_source dispatch (Dukascopy files and folders, sample)


def test_read_source_dukascopy_files(dukascopy_dir: Path) -> None:
    ticks = read_source(dukascopy_dir / "EURUSD" / "2019" / "01" / "04" / "13h_ticks.bi5")
    assert ticks.is_ticks
    assert ticks.format == "dukascopy_bi5"
    candles = read_source(dukascopy_dir / "EURUSD" / "2019" / "01" / "BID_candles_hour_1.bi5")
    assert not candles.is_ticks
    assert (candles.side, candles.timeframe, candles.symbol) == ("bid", "1h", "EURUSD")
    assert candles.frame.get_column("row").to_list() == list(range(candles.frame.height))
    with pytest.raises(ConfigError, match="holds bid candles"):
        read_source(dukascopy_dir / "EURUSD" / "2019" / "BID_candles_day_1.bi5", side="ask")


def test_read_source_datafeed_folder(dukascopy_dir: Path) -> None:
    raw = read_source(dukascopy_dir, start="2019-02-04", end="2019-02-05", timeframe="tick")
    assert raw.is_ticks
    assert raw.symbol == "EURUSD"
    with pytest.raises(ConfigError, match="needs start= and end="):
        read_source(dukascopy_dir)


def test_read_source_sample_and_errors(tmp_path: Path) -> None:
    raw = read_source("sample")
    assert (raw.format, raw.row_kind, raw.side, raw.timeframe) == ("sample", "row", "ask", "1h")
    with pytest.raises(ConfigError, match="holds ask prices"):
        read_source("sample", side="bid")
    with pytest.raises(DataError, match="no such file"):
        read_source(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="unknown file type"):
        read_source(write(tmp_path, "data.xlsx", "x"))


# ---------------------------------------------------------------------------------------------
# load_bars: canonical bars from every kind of source


def test_load_bars_sample_is_clean_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)
        bars = load_bars("sample")
    assert check_bars(bars) == []
    assert bars.height == 6225


def test_load_bars_csv_trims_and_resamples(eurusd_h1_csv: Path) -> None:
    bars = load_bars(eurusd_h1_csv, start="2017-03-01", end=dt.date(2017, 4, 1))
    assert check_bars(bars) == []
    assert bars.get_column("ts").min() >= ts(2017, 3, 1)
    assert bars.get_column("ts").max() < ts(2017, 4, 1)
    four_hours = load_bars(eurusd_h1_csv, timeframe="4h", start="2017-03-01", end="2017-04-01")
    assert check_bars(four_hours) == []
    assert set(four_hours.get_column("ts").dt.hour().unique().to_list()) <= {0, 4, 8, 12, 16, 20}
    with pytest.raises(ConfigError, match="cannot resample"):
        load_bars(eurusd_h1_csv, timeframe="15m")


def test_load_bars_reports_repairs_with_one_warning(tmp_path: Path) -> None:
    lines = DUKASCOPY_LINES.splitlines()
    text = (
        "Time,Open,High,Low,Close,Volume\n"
        + "\n".join([lines[1], lines[0], lines[0], lines[2]])
        + "\n"
    )
    path = write(tmp_path, "messy.csv", text)
    with pytest.warns(SourceWarning, match="cleaning changed the data") as record:
        bars = load_bars(path)
    assert len([w for w in record if issubclass(w.category, SourceWarning)]) == 1
    assert check_bars(bars) == []
    assert bars.height == 3
    loaded = load_bars_report(path)
    assert loaded.raw_rows == 4
    assert loaded.report.n_dropped == 1
    assert loaded.report.summary()["reordered"] >= 1  # line 2 (23:00) came before 22:00
    assert loaded.format == "dukascopy_csv"


@pytest.mark.parametrize(
    "kind", ["histdata", "mt4", "mt5", "generic", "parquet", "polars", "pandas"]
)
def test_load_bars_every_text_and_table_source(tmp_path: Path, kind: str) -> None:
    sources = {
        "histdata": write(tmp_path, "h.csv", HISTDATA_CSV),
        "mt4": write(tmp_path, "m4.csv", MT4_CSV),
        "mt5": write(tmp_path, "m5.csv", MT5_CSV),
        "generic": write(
            tmp_path,
            "g.csv",
            GENERIC_CSV.replace("2017-01-02T02:00:00.250+", "2017-01-02T02:00:00+"),
        ),
    }
    if kind in sources:
        source: object = sources[kind]
    elif kind == "parquet":
        source = write_parquet_atomic(load_sample().head(24), tmp_path / "b.parquet")
    elif kind == "polars":
        source = load_sample().head(24)
    else:
        source = load_sample().head(24).to_pandas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SourceWarning)
        bars = load_bars(source, tz="UTC" if kind in ("mt4", "mt5") else None)
    assert check_bars(bars) == []
    assert bars.height >= 2


def test_load_bars_dukascopy_sources(dukascopy_dir: Path) -> None:
    tick_file = dukascopy_dir / "EURUSD" / "2019" / "01" / "04" / "13h_ticks.bi5"
    minute = load_bars(tick_file)
    assert check_bars(minute) == []
    assert minute.height == 60
    assert minute.get_column("ts")[0] == ts(2019, 2, 4, 13)
    assert "spread" in minute.columns
    five = load_bars(tick_file, timeframe="5m", side="mid")
    assert five.height == 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SourceWarning)  # flat closed-market candles are dropped
        hourly = load_bars(dukascopy_dir / "EURUSD" / "2019" / "01" / "BID_candles_hour_1.bi5")
    assert check_bars(hourly) == []
    folder = load_bars(dukascopy_dir, start="2019-02-04", end="2019-02-05", timeframe="15m")
    assert check_bars(folder) == []
    assert folder.height == 96
    from_ticks = load_bars(
        dukascopy_dir, start="2019-02-04 12:00", end="2019-02-04 14:00", timeframe="tick"
    )
    assert from_ticks.get_column("ts").to_list() == [ts(2019, 2, 4, 12, m) for m in range(60)] + [
        ts(2019, 2, 4, 13, m) for m in range(60)
    ]


# ---------------------------------------------------------------------------------------------
# Files as users have them (issue 14): found by content, or a one-line error at the first bad row


def real_bars(n: int = 72) -> pl.DataFrame:
    """The first ``n`` hourly bars of the real 2017 EUR/USD sample (tests/data/eurusd_h1)."""
    return load_sample().head(n)


def pandas_csv(tmp_path: Path, bars: pl.DataFrame, name: str = "pandas.csv") -> Path:
    """``bars`` as pandas' ``DataFrame.to_csv()`` writes them: an unnamed datetime index."""
    frame = bars.to_pandas().set_index("ts")
    frame.index = frame.index.tz_localize(None)
    frame.index.name = None
    frame.columns = ["Open", "High", "Low", "Close", "Volume"]
    path = tmp_path / name
    frame.to_csv(path)
    return path


def test_pandas_to_csv_with_an_unnamed_index_is_read(tmp_path: Path) -> None:
    bars = real_bars()
    path = pandas_csv(tmp_path, bars)
    assert path.read_text().startswith(",Open,High,Low,Close,Volume\n2017-01-01 22:00:00,")
    raw = read_csv_source(path)
    assert raw.frame.drop("row").equals(bars)
    assert len(raw.notes) == 1
    assert "column 1 (no header name)" in raw.notes[0]
    assert "'2017-01-01 22:00:00'" in raw.notes[0]
    loaded = load_bars_report(path)
    assert loaded.notes == raw.notes
    assert loaded.bars.drop("flags").equals(bars)
    with pytest.warns(SourceWarning, match=r"time taken from column 1 \(no header name\)"):
        load_bars(path)
    # the unnamed column can also be named by position
    assert read_csv_source(path, columns={"ts": "#1"}).notes == ()


@pytest.mark.parametrize(
    ("header", "stamp", "expected"),
    [
        ("Stamp", "2017-01-02T22:00:00Z", ts(2017, 1, 2, 22)),
        ("Zeit", "02.01.2017 22:00:00.000", ts(2017, 1, 2, 22)),
        ("bar", "2017.01.02 22:00", ts(2017, 1, 2, 22)),
        ("epoch", "1483394400", ts(2017, 1, 2, 22)),
        ("", "1483394400000", ts(2017, 1, 2, 22)),
    ],
)
def test_time_column_found_by_content(
    tmp_path: Path, header: str, stamp: str, expected: dt.datetime
) -> None:
    text = f"id,{header},open,high,low,close,volume\n7,{stamp},1,2,0.5,1.5,3\n"
    raw = read_csv_source(write(tmp_path, "c.csv", text))
    assert raw.frame.get_column("ts").to_list() == [expected]
    assert "column 2" in raw.notes[0]
    assert raw.ignored_columns == ("id",)


def test_no_time_column_error_is_neutral_about_python_and_cli(tmp_path: Path) -> None:
    text = "id,when,open,high,low,close\n7,yesterday,1,2,0.5,1.5\n"
    with pytest.raises(DataError) as info:
        read_csv_source(write(tmp_path, "none.csv", text))
    message = str(info.value)
    assert "line 1: no time column found" in message
    assert "columns={'ts': NAME} (CLI: --columns ts=NAME)" in message
    with pytest.raises(DataError, match=r"format= \(CLI: --format\)"):
        read_csv_source(write(tmp_path, "odd.csv", "2017-01-02 00:00:00,1,2,0.5,1.5,1\n"))


def offset_file(tmp_path: Path, bars: pl.DataFrame, naive_from: int | None) -> Path:
    """Times written in +02:00 with their offset; from row ``naive_from`` on without it."""
    lines = ["timestamp,open,high,low,close,volume"]
    for i, row in enumerate(bars.iter_rows(named=True)):
        local = (row["ts"] + dt.timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
        stamp = local if naive_from is not None and i >= naive_from else f"{local}+02:00"
        prices = ",".join(str(row[c]) for c in ("open", "high", "low", "close", "volume"))
        lines.append(f"{stamp},{prices}")
    path = tmp_path / "offsets.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def epoch_file(tmp_path: Path, bars: pl.DataFrame, millis_at: int | None) -> Path:
    """Epoch seconds; the row ``millis_at`` in milliseconds."""
    lines = ["timestamp,open,high,low,close,volume"]
    for i, row in enumerate(bars.iter_rows(named=True)):
        seconds = int(row["ts"].timestamp())
        stamp = seconds * 1000 if i == millis_at else seconds
        prices = ",".join(str(row[c]) for c in ("open", "high", "low", "close", "volume"))
        lines.append(f"{stamp},{prices}")
    path = tmp_path / "epoch.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("make", "bad_at", "pattern"),
    [
        (
            offset_file,
            36,
            r"line 38, field 'timestamp': timestamp style changes: this one has no UTC offset, "
            r"the rows before it carry one .*\(36 rows like this",
        ),
        (
            epoch_file,
            40,
            r"line 42, field 'timestamp': epoch unit changes: this value is in milliseconds, "
            r"the first row's \(1483308000\) in seconds",
        ),
    ],
    ids=["offset-then-naive", "seconds-then-milliseconds"],
)
def test_time_style_changing_mid_file_is_an_error(
    tmp_path: Path, make, bad_at: int, pattern: str
) -> None:
    bars = real_bars()
    path = make(tmp_path, bars, bad_at)
    with pytest.raises(DataError) as info:
        load_bars(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line "), message
    assert re.search(pattern, message), message
    assert "\n" not in message
    # the same file written in one style reads as the real bars
    good = make(tmp_path, bars, None)
    assert load_bars(good).drop("flags").equals(bars)


def test_naive_then_offset_and_frame_epochs_are_errors_too(tmp_path: Path) -> None:
    text = (
        "ts,open,high,low,close,volume\n"
        "2017-01-02 22:00:00,1,2,0.5,1.5,1\n"
        "2017-01-02 23:00:00Z,1,2,0.5,1.5,1\n"
    )
    with pytest.raises(DataError, match=r"line 3.*carries a UTC offset, the rows before it have"):
        read_csv_source(write(tmp_path, "n.csv", text))
    frame = real_bars(5).with_columns(
        pl.Series("ts", [1483308000, 1483311600, 1483315200000, 1483318800, 1483322400])
    )
    with pytest.raises(DataError, match=r"row 2, field 'ts': epoch unit changes"):
        read_frame_source(frame)


def test_parquet_flags_must_be_a_bit_set(tmp_path: Path) -> None:
    bars = real_bars(20)
    flags = [0] * 20
    flags[10] = -1
    path = tmp_path / "flags.parquet"
    bars.with_columns(pl.Series("flags", flags, dtype=pl.Int64)).write_parquet(path)
    with pytest.raises(DataError) as info:
        read_parquet_source(path)
    assert str(info.value) == (
        f"{path}, row 10, field 'flags': flags must be a bit set: an integer from 0 to "
        "4294967295 (got -1)"
    )
    flags[10] = 4
    good = tmp_path / "good.parquet"
    bars.with_columns(pl.Series("flags", flags, dtype=pl.Int64)).write_parquet(good)
    assert read_parquet_source(good).frame.get_column("flags").to_list() == flags
    floats = tmp_path / "floats.parquet"
    bars.with_columns(pl.lit(0.5).alias("flags")).write_parquet(floats)
    with pytest.raises(DataError, match=r"field 'flags': flags column has dtype Float64"):
        read_parquet_source(floats)


def test_parquet_errors_say_row_not_line(tmp_path: Path) -> None:
    path = tmp_path / "nolow.parquet"
    real_bars(5).drop("low").write_parquet(path)
    with pytest.raises(DataError) as info:
        read_parquet_source(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no column found for ['low']"), message
    assert "line" not in message


def test_parquet_bit_flip_close_is_an_error_not_a_repair(tmp_path: Path) -> None:
    bars = real_bars()
    path = tmp_path / "flip.parquet"
    flipped = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == 30)
        .then(8.99e-78)
        .otherwise(pl.col("close"))
        .alias("close")
    )
    flipped.write_parquet(path)
    with pytest.raises(DataError) as info:
        load_bars(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}, row 30, field 'close': implausible price: close 8.99e-78"
    ), message
    good = tmp_path / "good.parquet"
    bars.write_parquet(good)
    assert load_bars(good).drop("flags").equals(bars)


def test_load_bars_warns_about_flagged_spikes_and_long_holes(tmp_path: Path) -> None:
    bars = real_bars(1000)
    spike_at = 500
    bad = float(bars["close"][spike_at]) * 1.01  # a 1 % bad tick, reverted at the next bar
    messy = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == spike_at).then(bad).otherwise(pl.col(c)).alias(c)
        for c in ("close", "high")
    ).filter((pl.int_range(pl.len()) < 100) | (pl.int_range(pl.len()) >= 400))
    path = write_parquet_atomic(messy, tmp_path / "messy.parquet")
    with pytest.warns(SourceWarning) as record:
        load_bars(path)
    texts = [str(w.message) for w in record if issubclass(w.category, SourceWarning)]
    assert len(texts) == 1
    assert "1 price spike(s) flagged and kept, the first at row 200" in texts[0]
    assert "1 hole(s) of a week or more without bars, the longest" in texts[0]
    loaded = load_bars_report(path)
    assert len(loaded.alerts()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)
        load_bars(write_parquet_atomic(bars, tmp_path / "good.parquet"))
