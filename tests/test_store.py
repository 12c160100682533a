"""The bars dataset (aiopt_lib.data.store): streaming tick aggregation, Hive layout, lazy range
reads with partition pruning, resumable atomic writes, and the dataset as a load_bars source.

Real files in tmp_path throughout: the Dukascopy fixture hours (tests/data/dukascopy) and small
synthetic mirrors written with the real .bi5 encoder.
"""

from __future__ import annotations

import datetime as dt
import lzma
import shutil
import struct
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import aiopt_lib as ai
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.data import dukascopy, store
from aiopt_lib.data.resample import ticks_to_bars
from aiopt_lib.data.synthetic import open_hours, synthetic_bars, write_tick_mirror

UTC = dt.UTC


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _tick_files(mirror: Path) -> list[Path]:
    return sorted(mirror.rglob("*h_ticks.bi5"))


def _all_ticks(mirror: Path) -> pl.DataFrame:
    """Every tick of the mirror in one frame: the in-memory path the streaming one must equal."""
    return pl.concat([dukascopy.read_file(p) for p in _tick_files(mirror)])


@pytest.fixture
def real_mirror(tmp_path: Path, dukascopy_dir: Path) -> Path:
    """The 48 real hour files of 2019-02-04/05 (266,219 ticks), tick files only."""
    mirror = tmp_path / "mirror"
    for path in sorted((dukascopy_dir / "EURUSD/2019/01").glob("*/*h_ticks.bi5")):
        target = mirror / path.relative_to(dukascopy_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return mirror


@pytest.fixture(scope="module")
def year_end_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic ticks from 2016-12-28 to 2017-01-04: two months, two years, a weekend and the
    New Year closure, 0-byte files for the closed hours."""
    mirror = tmp_path_factory.mktemp("year_end") / "mirror"
    write_tick_mirror(mirror, ticks=40_000, start="2016-12-28", end="2017-01-04", seed=3)
    return mirror


def _aggregate(mirror: Path, root: Path, **options: object) -> store.AggregationReport:
    return store.aggregate_ticks(mirror, root, "EURUSD", **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Streaming aggregation = in-memory aggregation


@pytest.mark.parametrize("price", ["both", "bid", "mid"])
def test_streaming_equals_in_memory_aggregation_of_real_hours(
    real_mirror: Path, tmp_path: Path, price: str
) -> None:
    report = _aggregate(real_mirror, tmp_path / "ds", price=price, batch_ticks=20_000)
    expected = ticks_to_bars(_all_ticks(real_mirror), "1m", price=price)  # type: ignore[arg-type]
    got = store.read_bars(tmp_path / "ds", "EURUSD")
    assert_frame_equal(got, expected)  # exact: every bit of every column
    assert report.files == 48 and report.ticks == 266_219 and report.bars == expected.height
    assert report.skipped == 0 and report.empty_files == 0


def test_streaming_equals_in_memory_across_months_and_years(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    report = _aggregate(year_end_mirror, tmp_path / "ds", batch_ticks=3_000)
    expected = ticks_to_bars(_all_ticks(year_end_mirror), "1m", price="both")
    assert_frame_equal(store.read_bars(tmp_path / "ds"), expected)
    assert report.ticks == 40_000 and report.empty_files > 0  # the weekend's 0-byte hours


def test_batches_bound_the_ticks_in_flight_and_do_not_change_the_bars(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    files = _tick_files(year_end_mirror)
    largest_file = max(dukascopy.read_file(p).height for p in files)
    days: dict[Path, int] = {}
    for path in files:
        days[path.parent] = days.get(path.parent, 0) + dukascopy.read_file(path).height
    largest_day = max(days.values())
    expected = ticks_to_bars(_all_ticks(year_end_mirror), "1m", price="both")
    for batch in (1, 500, largest_day):
        report = _aggregate(year_end_mirror, tmp_path / f"ds{batch}", batch_ticks=batch)
        # the aggregator holds less than the batch plus one hour file
        assert report.max_ticks_in_flight < batch + largest_file
        assert_frame_equal(store.read_bars(tmp_path / f"ds{batch}"), expected)
    # one file at a time: exactly the largest file, never a day's or a month's ticks
    one = _aggregate(year_end_mirror, tmp_path / "one", batch_ticks=1)
    assert one.max_ticks_in_flight == largest_file < largest_day < one.ticks


# ---------------------------------------------------------------------------------------------
# Layout, lazy reads, pruning


def test_parts_are_hive_partitioned_by_symbol_and_year_one_file_a_month(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    report = _aggregate(year_end_mirror, root)
    assert [p.relative_to(root).as_posix() for p in report.written] == [
        "symbol=EURUSD/year=2016/part-2016-12.parquet",
        "symbol=EURUSD/year=2017/part-2017-01.parquet",
    ]
    meta = pl.read_parquet_metadata(report.written[0])
    assert (meta["symbol"], meta["side"], meta["timeframe"]) == ("EURUSD", "both", "1m")
    # any Hive reader sees the partition columns from the folder names
    hive = pl.read_parquet(root / "**/*.parquet", hive_partitioning=True)
    assert hive.get_column("symbol").unique().to_list() == ["EURUSD"]
    assert sorted(hive.get_column("year").unique().to_list()) == [2016, 2017]
    assert store.dataset_symbols(root) == ["EURUSD"]
    assert store.is_dataset(root) and store.is_dataset(root / "symbol=EURUSD")
    assert not store.is_dataset(year_end_mirror)


def _hourly_dataset(root: Path) -> pl.DataFrame:
    """Hourly bars of the open market, 2016-06 to 2018-06, stored under root; returned."""
    ts = open_hours("2016-06-01", "2018-06-01")
    minutes = synthetic_bars(ts.len(), start="2016-06-01", both=False, seed=5)
    bars = minutes.with_columns(ts).select(ai.BAR_COLUMNS)  # hourly stamps, random-walk prices
    store.write_bars(bars, root, "EURUSD", side="bid")
    return bars


def test_range_reads_return_exactly_the_range_and_prune_other_years(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    bars = _hourly_dataset(root)
    start, end = _utc(2017, 3, 5, 10), _utc(2017, 9, 1)
    lazy = store.scan_bars(root, "EURUSD", start, end)
    assert isinstance(lazy, pl.LazyFrame)
    expected = bars.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
    assert_frame_equal(lazy.collect(), expected)
    assert_frame_equal(store.read_bars(root, "EURUSD", "2017-03-05T10:00", "2017-09-01"), expected)
    # open ends and a range between the bars
    assert_frame_equal(
        store.read_bars(root, end="2016-07-01"), bars.filter(pl.col("ts") < _utc(2016, 7, 1))
    )
    assert store.read_bars(root, start="2030-01-01").height == 0
    # pruning: the other years' parts are never opened, so damaging them changes nothing...
    for part in [*root.glob("symbol=EURUSD/year=2016/*"), *root.glob("symbol=EURUSD/year=2018/*")]:
        part.write_bytes(b"not parquet")
    assert_frame_equal(store.read_bars(root, "EURUSD", start, end), expected)
    # ...until a range needs them: the error names the damaged file
    damaged = root / "symbol=EURUSD/year=2018/part-2018-01.parquet"
    with pytest.raises(DataError, match="not a readable Parquet part") as info:
        store.read_bars(root, "EURUSD", "2017-12-30", "2018-02-01")
    assert str(damaged) in str(info.value)


def test_side_reads_only_that_sides_columns(year_end_mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _aggregate(year_end_mirror, root)
    both = store.read_bars(root)
    ask = store.read_bars(root, side="ask")
    assert ask.columns == ["ts", "open", "high", "low", "close", "volume", "spread"]
    assert ask.get_column("open").equals(both.get_column("ask_open").alias("open"))
    plan = store.scan_bars(root, side="bid").explain()
    assert "ask_open" not in plan  # projection pushdown: the ask columns stay on disk
    with pytest.raises(ConfigError, match="mid bars are aggregated from ticks"):
        store.scan_bars(root, side="mid")


# ---------------------------------------------------------------------------------------------
# Resuming, atomic writes, bad input


def _stamps(paths: list[Path]) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in paths}


def test_rerun_skips_finished_months_and_rebuilds_a_changed_one(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(year_end_mirror, mirror)
    root = tmp_path / "ds"
    first = _aggregate(mirror, root)
    before = _stamps(list(first.written))
    again = _aggregate(mirror, root)
    assert again.skipped == 2 and again.written == () and again.files == 0
    assert _stamps(list(first.written)) == before  # untouched
    # a January hour changes (re-downloaded, say): January only is rebuilt
    changed = mirror / "EURUSD/2017/00/03/10h_ticks.bi5"
    ticks = dukascopy.read_file(changed).head(5)
    changed.write_bytes(dukascopy.encode_ticks(ticks, _utc(2017, 1, 3, 10), point_value=100_000))
    third = _aggregate(mirror, root)
    assert third.skipped == 1
    assert [p.name for p in third.written] == ["part-2017-01.parquet"]
    assert_frame_equal(store.read_bars(root), ticks_to_bars(_all_ticks(mirror), "1m", price="both"))
    # overwrite rebuilds everything; other prices would be other columns: refused, not mixed
    assert len(_aggregate(mirror, root, overwrite=True).written) == 2
    with pytest.raises(DataError, match="these bars have"):
        _aggregate(mirror, root, price="bid")


def test_a_corrupt_file_stops_with_its_name_keeps_finished_months_and_resumes(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(year_end_mirror, mirror)
    bad = mirror / "EURUSD/2017/00/03/10h_ticks.bi5"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # an interrupted download
    root = tmp_path / "ds"
    with pytest.raises(DataError, match="truncated") as info:
        _aggregate(mirror, root)
    assert str(bad) in str(info.value)
    year = root / "symbol=EURUSD"
    # December was finished and written whole; January was not written at all, not even half
    assert [p.name for p in year.rglob("*.parquet")] == ["part-2016-12.parquet"]
    assert not [p for p in year.rglob("*") if p.name.startswith(".")]  # no temporary file left
    bad.write_bytes(good)
    resumed = _aggregate(mirror, root)
    assert resumed.skipped == 1 and [p.name for p in resumed.written] == ["part-2017-01.parquet"]
    assert_frame_equal(store.read_bars(root), ticks_to_bars(_all_ticks(mirror), "1m", price="both"))


def test_a_record_going_back_in_time_names_file_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "mirror/EURUSD/2019/01/04/10h_ticks.bi5"
    path.parent.mkdir(parents=True)
    records = [struct.pack(">IIIff", ms, 114_000, 113_990, 1.0, 1.0) for ms in (5, 900, 300)]
    path.write_bytes(lzma.compress(b"".join(records), format=lzma.FORMAT_ALONE))
    with pytest.raises(DataError) as info:
        _aggregate(tmp_path / "mirror", tmp_path / "ds")
    assert f"{path}, record 2, field 'ms'" in str(info.value)


def test_readers_never_see_a_temporary_file_left_by_a_crash(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    _aggregate(year_end_mirror, root)
    expected = store.read_bars(root)
    # what a writer killed mid-write leaves beside the part (write_parquet_atomic's temp name)
    (root / "symbol=EURUSD/year=2017/.part-2017-01.x1y2.tmp.parquet").write_bytes(b"half")
    assert_frame_equal(store.read_bars(root), expected)
    assert_frame_equal(ai.load_bars(root, side="both").drop("flags"), expected)


def test_write_bars_replaces_whole_months_and_keeps_one_schema(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    bars = synthetic_bars(20_000, start="2017-01-30", seed=2)  # Jan 30 .. Feb 16
    paths = store.write_bars(bars, root, "eurusd")
    assert [p.name for p in paths] == ["part-2017-01.parquet", "part-2017-02.parquet"]
    assert_frame_equal(store.read_bars(root, "EURUSD"), bars)
    # February rewritten from other bars: January untouched, February replaced whole
    january = paths[0].stat().st_mtime_ns
    other = synthetic_bars(1000, start="2017-02-06", seed=9)
    assert [p.name for p in store.write_bars(other, root, "EURUSD")] == ["part-2017-02.parquet"]
    assert paths[0].stat().st_mtime_ns == january
    expected = pl.concat([bars.filter(pl.col("ts") < _utc(2017, 2, 1)), other])
    assert_frame_equal(store.read_bars(root), expected)
    # a lazy frame is written a month at a time, the same bars
    assert store.write_bars(store.scan_bars(root), tmp_path / "copy", "EURUSD")
    assert_frame_equal(store.read_bars(tmp_path / "copy"), expected)
    # parts of one instrument share a schema: other columns are refused, naming a part
    with pytest.raises(DataError, match="columns") as info:
        store.write_bars(other.select(ai.BAR_COLUMNS).head(10), root, "EURUSD")
    assert "part-2017-01.parquet" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The dataset as a source of load_bars


def test_load_bars_reads_the_dataset_by_source(year_end_mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _aggregate(year_end_mirror, root)
    stored = store.read_bars(root, side="bid")
    start, end = "2016-12-29T05:00", "2017-01-03"
    expected = stored.filter(
        (pl.col("ts") >= _utc(2016, 12, 29, 5)) & (pl.col("ts") < _utc(2017, 1, 3))
    )
    loaded = ai.load_bars_report(root, symbol="EURUSD", side="bid", start=start, end=end)
    assert loaded.format == "hive" and loaded.symbol == "EURUSD" and loaded.side == "bid"
    assert_frame_equal(loaded.bars.drop("flags"), expected)
    gaps = loaded.report.issues.filter(pl.col("kind") == "gap")
    assert "expected_weekend" in " ".join(gaps.get_column("detail").to_list())  # New Year weekend
    # the instrument's folder, format= forced, a coarser timeframe, the other side
    hourly = ai.load_bars(root / "symbol=EURUSD", format="hive", timeframe="1h", side="ask")
    assert hourly.get_column("open").head(1).item() == store.read_bars(root).get_column(
        "ask_open"
    ).item(0)
    assert (hourly.get_column("ts").dt.minute() == 0).all()
    assert ai.read_source(root, start=start, end=end).format == "hive"


def test_load_bars_asks_which_instrument_of_several(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    bars = synthetic_bars(100, start="2017-03-01")
    store.write_bars(bars, root, "EURUSD")
    store.write_bars(bars, root, "GBPUSD")
    with pytest.raises(ConfigError, match=r"pass symbol=.*EURUSD, GBPUSD"):
        ai.load_bars(root)
    with pytest.raises(DataError, match="no USDJPY bars"):
        ai.load_bars(root, symbol="USDJPY")
    assert ai.load_bars(root, symbol="gbpusd", side="both").height == 100


def test_bad_options_and_missing_folders_say_what_is_wrong(
    year_end_mirror: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="price must be one of"):
        _aggregate(year_end_mirror, tmp_path / "ds", price="last")
    with pytest.raises(ConfigError, match="batch_ticks must be an int >= 1"):
        _aggregate(year_end_mirror, tmp_path / "ds", batch_ticks=0)
    with pytest.raises(DataError, match="no GBPUSD folder"):
        store.aggregate_ticks(year_end_mirror, tmp_path / "ds", "GBPUSD")
    with pytest.raises(ConfigError, match=r"start .* must be before end"):
        _aggregate(year_end_mirror, tmp_path / "ds", start="2017-01-02", end="2017-01-01")
    with pytest.raises(DataError, match="no such bars dataset folder"):
        store.read_bars(tmp_path / "nowhere", "EURUSD")
    # the mirror's instrument folder works as well as the mirror, and a range limits the hours
    part = _aggregate(year_end_mirror / "EURUSD", tmp_path / "jan", start="2017-01-02")
    assert [p.name for p in part.written] == ["part-2017-01.parquet"]
    expected = ticks_to_bars(_all_ticks(year_end_mirror), "1m", price="both")
    assert_frame_equal(
        store.read_bars(tmp_path / "jan"), expected.filter(pl.col("ts") >= _utc(2017, 1, 2))
    )


def test_edges_empty_months_damaged_parts_and_sides(tmp_path: Path) -> None:
    # a month of closed hours only (0-byte files): an empty part, skipped on a rerun
    mirror = tmp_path / "mirror"
    write_tick_mirror(mirror, ticks=0, start="2017-01-07", end="2017-01-08")
    root = tmp_path / "ds"
    report = _aggregate(mirror, root, price="bid")
    assert report.bars == 0 and report.empty_files == 24 and len(report.written) == 1
    empty = store.read_bars(root)
    assert empty.height == 0 and empty.columns == ["ts", *ai.BAR_COLUMNS[1:], "spread"]
    assert _aggregate(mirror, root, price="bid").skipped == 1
    # a damaged part is rebuilt, not trusted
    report.written[0].write_bytes(b"damaged")
    assert len(_aggregate(mirror, root, price="bid").written) == 1
    # sides a one-sided dataset cannot give
    assert store.dataset_metadata(root)["side"] == "bid"
    assert store.read_bars(root, side="bid").columns == empty.columns
    for side, message in (("both", r"needs bid_\* and ask_\*"), ("ask", "holds bid bars")):
        with pytest.raises(ConfigError, match=message):
            store.scan_bars(root, side=side)
    with pytest.raises(ConfigError, match="side must be one of"):
        store.scan_bars(root, side="last")
    with pytest.raises(ConfigError, match="holds EURUSD, not GBPUSD"):
        store.scan_bars(root / "symbol=EURUSD", "GBPUSD")
    # nothing to write, nothing written
    assert store.write_bars(empty, root, "EURUSD") == []
    assert store.write_bars(empty.lazy(), root, "EURUSD") == []
    assert store.dataset_symbols(tmp_path / "nowhere") == [] and not store.is_dataset(
        report.written[0]
    )
    # a mirror of several instruments needs symbol=
    write_tick_mirror(mirror, "GBPUSD", ticks=0, start="2017-01-07", end="2017-01-08")
    with pytest.raises(ConfigError, match=r"pass symbol=.*EURUSD, GBPUSD"):
        store.aggregate_ticks(mirror, root)


def test_cli_data_aggregate_writes_the_dataset_and_resumes(
    real_mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiopt_lib.runs.cli import main

    root = tmp_path / "bars"
    argv = ["data", "aggregate", str(real_mirror), "--out", str(root), "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "1 month(s) written, 0 already done; 266,219 ticks ->" in first
    assert main(argv) == 0  # the month is done: skipped
    assert "0 month(s) written, 1 already done" in capsys.readouterr().out
    bars = store.read_bars(root, "EURUSD")
    assert bars.height == int(first.split(" ticks -> ")[1].split(" bars")[0].replace(",", ""))
