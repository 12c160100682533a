"""The Dukascopy downloader against a real HTTP server on 127.0.0.1 serving the fixture files in
the datafeed layout, with failures injected per path (404, 500 N times, truncated bodies, cut
connections, 0-byte bodies, delays). Backoff is tiny so the suite stays fast."""

from __future__ import annotations

import datetime as dt
import lzma
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.bars import check_bars, check_ticks
from aiopt_lib.core.errors import DataError
from aiopt_lib.data import dukascopy as duka
from aiopt_lib.data.resample import resample_bars, ticks_to_bars

pytestmark = pytest.mark.network

UTC = dt.UTC
OHLC = ["open", "high", "low", "close"]


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _tick_path(day: int, hour: int) -> str:
    return f"EURUSD/2019/01/{day:02d}/{hour:02d}h_ticks.bi5"


DAY1 = [_tick_path(4, h) for h in range(24)]
DAY2 = [_tick_path(5, h) for h in range(24)]


@dataclass
class Feed:
    """What the test server serves and what it saw. Paths are datafeed-relative."""

    root: Path
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter[str] = field(default_factory=Counter)
    user_agents: set[str] = field(default_factory=set)
    active: int = 0
    max_active: int = 0
    delay: float = 0.0
    not_found: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)  # path -> HTTP 500 responses left
    truncated: dict[str, int] = field(default_factory=dict)  # path -> cut LZMA bodies left
    cut_connection: dict[str, int] = field(default_factory=dict)  # path -> short reads left
    empty: set[str] = field(default_factory=set)  # paths served as 200 with 0 bytes
    extra: dict[str, bytes] = field(default_factory=dict)  # synthetic files

    def _take(self, table: dict[str, int], path: str) -> bool:
        if table.get(path, 0) > 0:
            table[path] -= 1
            return True
        return False

    def respond(self, path: str) -> tuple[int, bytes, int | None]:
        """Status, body, and the Content-Length to announce (None: the body's)."""
        with self.lock:
            if path in self.not_found:
                return 404, b"not found", None
            if self._take(self.errors, path):
                return 500, b"server error", None
            if path in self.empty:
                return 200, b"", None
            if path in self.extra:
                body = self.extra[path]
            else:
                file = self.root / path
                if not file.is_file() or ".." in path:
                    return 404, b"not found", None
                body = file.read_bytes()
            if self._take(self.truncated, path):
                return 200, body[: len(body) // 2], None
            if self._take(self.cut_connection, path):
                return 200, body[: len(body) // 2], len(body)
            return 200, body, None

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.max_active = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        feed = self.server.feed
        path = self.path.removeprefix("/datafeed/")
        with feed.lock:
            feed.requests[path] += 1
            feed.user_agents.add(self.headers.get("User-Agent", ""))
            feed.active += 1
            feed.max_active = max(feed.max_active, feed.active)
        try:
            if feed.delay:
                time.sleep(feed.delay)
            status, body, length = feed.respond(path)
        finally:
            # Leave before the response goes out: the client can only send its next request
            # after reading this one, so the count never includes a finished request.
            with feed.lock:
                feed.active -= 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    feed: Feed


@pytest.fixture
def feed(dukascopy_dir: Path) -> Iterator[Feed]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.feed = Feed(root=dukascopy_dir)
    host, port = server.server_address[:2]
    server.feed.base_url = f"http://{host}:{port}/datafeed"
    # a short poll interval: shutdown() waits for the next poll
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.feed
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def fetch(feed: Feed, cache: Path, start: Any, end: Any, **options: Any) -> duka.DownloadResult:
    settings: dict[str, Any] = {
        "cache_dir": cache,
        "base_url": feed.base_url,
        "progress": False,
        "backoff": 0.001,
        "retries": 3,
        "timeout": 10.0,
        "timeframe": "tick",
    }
    settings.update(options)
    return duka.download("EURUSD", start, end, **settings)


def direct(root: Path, paths: list[str]) -> pl.DataFrame:
    return pl.concat([duka.read_file(root / p) for p in paths])


def cached_files(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}


def encode_candles(bars: pl.DataFrame, period_start: dt.datetime, point_value: int) -> bytes:
    """A candle .bi5 file (one LZMA stream of >IIIIIf records: open, close, low, high)."""
    record = np.dtype(
        [
            ("s", ">u4"),
            ("open", ">i4"),
            ("close", ">i4"),
            ("low", ">i4"),
            ("high", ">i4"),
            ("volume", ">f4"),
        ]
    )
    out = np.zeros(bars.height, dtype=record)
    out["s"] = (bars["ts"] - period_start).dt.total_seconds().to_numpy()
    for column in OHLC:
        out[column] = np.rint(bars[column].to_numpy() * point_value)
    out["volume"] = bars["volume"].to_numpy()
    return lzma.compress(out.tobytes(), format=lzma.FORMAT_ALONE)


# ---------------------------------------------------------------------------------------------
# cache, counts, equality with the files


def test_first_download_fetches_each_file_once_then_the_cache_serves(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    first = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 6), workers=4)
    assert (first.files, first.downloaded, first.from_cache, first.empty) == (48, 48, 0, 0)
    assert feed.requests == Counter(dict.fromkeys(DAY1 + DAY2, 1))
    expected = direct(dukascopy_dir, DAY1 + DAY2)
    assert first.frame.equals(expected)
    assert first.frame.height == 266_219
    assert check_ticks(first.frame) == []
    assert cached_files(cache) == set(DAY1 + DAY2)
    assert all((cache / p).read_bytes() == (dukascopy_dir / p).read_bytes() for p in DAY1)
    assert any(agent.startswith("aiopt") for agent in feed.user_agents)

    feed.reset_counts()
    second = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 6), workers=4)
    assert (second.files, second.downloaded, second.from_cache) == (48, 0, 48)
    assert sum(feed.requests.values()) == 0
    assert second.frame.equals(expected)


@pytest.mark.parametrize(
    ("timeframe", "start", "end", "bounds", "paths"),
    [
        (
            "m1",
            "2019-02-04T12:00",
            "2019-02-05T06:30:00Z",
            (_utc(2019, 2, 4, 12), _utc(2019, 2, 5, 6, 30)),
            ["EURUSD/2019/01/04/BID_candles_min_1.bi5", "EURUSD/2019/01/05/BID_candles_min_1.bi5"],
        ),
        (
            "1h",
            dt.date(2019, 1, 15),
            dt.datetime(2019, 2, 10, 12),  # naive: UTC
            (_utc(2019, 1, 15), _utc(2019, 2, 10, 12)),
            ["EURUSD/2019/00/BID_candles_hour_1.bi5", "EURUSD/2019/01/BID_candles_hour_1.bi5"],
        ),
        (
            "d1",
            "2018-12-30",
            "2019-01-03T02:00+02:00",
            (_utc(2018, 12, 30), _utc(2019, 1, 3)),
            ["EURUSD/2018/BID_candles_day_1.bi5", "EURUSD/2019/BID_candles_day_1.bi5"],
        ),
    ],
)
def test_candle_downloads_equal_the_files_trimmed_to_the_range(
    feed: Feed,
    cache: Path,
    dukascopy_dir: Path,
    timeframe: str,
    start: Any,
    end: Any,
    bounds: tuple[dt.datetime, dt.datetime],
    paths: list[str],
) -> None:
    result = fetch(feed, cache, start, end, timeframe=timeframe)
    assert (result.files, result.downloaded) == (2, 2)
    assert set(feed.requests) == set(paths)
    lo, hi = bounds
    expected = direct(dukascopy_dir, paths).filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
    assert result.frame.equals(expected)
    assert result.frame["ts"][0] == lo
    assert check_bars(result.frame) == []


def test_ask_and_both_sides(feed: Feed, cache: Path, dukascopy_dir: Path) -> None:
    # The fixture has bid candles only: serve ask candles built from the ask ticks.
    ticks = direct(dukascopy_dir, DAY1)
    ask = ticks_to_bars(ticks, "1m", price="ask").drop("spread")
    feed.extra["EURUSD/2019/01/04/ASK_candles_min_1.bi5"] = encode_candles(
        ask, _utc(2019, 2, 4), 100_000
    )
    bid = duka.read_file(dukascopy_dir / "EURUSD/2019/01/04/BID_candles_min_1.bi5")

    ask_only = fetch(feed, cache, "2019-02-04", "2019-02-05", timeframe="m1", side="ask")
    assert ask_only.frame.select(OHLC).equals(ask.select(OHLC))

    both = fetch(feed, cache, "2019-02-04", "2019-02-05", timeframe="m1", side="both")
    frame = both.frame
    assert check_bars(frame) == []
    assert (both.files, both.from_cache, both.downloaded) == (2, 1, 1)
    assert frame.select("ts", *OHLC, "volume").equals(bid)
    for column in OHLC:
        assert frame[f"bid_{column}"].equals(bid[column])
        assert frame[f"ask_{column}"].equals(ask[column])
    assert frame["spread"].equals(frame["ask_open"] - frame["bid_open"])
    assert (frame["spread"] > 0).all()


def test_side_both_needs_matching_candles(feed: Feed, cache: Path, dukascopy_dir: Path) -> None:
    ticks = direct(dukascopy_dir, DAY1)
    ask = ticks_to_bars(ticks, "1m", price="ask").drop("spread").slice(0, 100)
    feed.extra["EURUSD/2019/01/04/ASK_candles_min_1.bi5"] = encode_candles(
        ask, _utc(2019, 2, 4), 100_000
    )
    with pytest.raises(DataError, match=r"1340 bar\(s\) exist on one side only.*no ask candle"):
        fetch(feed, cache, "2019-02-04", "2019-02-05", timeframe="m1", side="both")


# ---------------------------------------------------------------------------------------------
# failures and retries


def test_server_errors_then_success_recover(feed: Feed, cache: Path) -> None:
    path = _tick_path(4, 9)
    feed.errors[path] = 2
    result = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5), retries=3)
    assert result.downloaded == 24
    assert feed.requests[path] == 3
    assert path in cached_files(cache)


def test_persistent_server_error_names_the_url_and_keeps_the_rest(feed: Feed, cache: Path) -> None:
    path = _tick_path(4, 9)
    feed.errors[path] = 1000
    with pytest.raises(duka.DownloadError) as info:
        fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5), retries=2, workers=2)
    error = info.value
    assert isinstance(error, DataError)
    assert f"{feed.base_url}/{path}" in str(error)
    assert error.url == f"{feed.base_url}/{path}"
    assert "HTTP 500" in str(error)
    assert error.attempts == 3
    assert feed.requests[path] == 3
    assert path not in cached_files(cache)
    assert cached_files(cache)  # what succeeded stays cached


def test_404_fails_at_once_naming_the_url(feed: Feed, cache: Path) -> None:
    path = _tick_path(4, 3)
    feed.not_found.add(path)
    with pytest.raises(duka.DownloadError, match=r"HTTP 404") as info:
        fetch(feed, cache, _utc(2019, 2, 4, 3), _utc(2019, 2, 4, 4), retries=3)
    assert str(info.value).startswith(f"{feed.base_url}/{path}: ")
    assert feed.requests[path] == 1
    assert info.value.attempts == 1


def test_truncated_body_is_retried_and_never_cached(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    path = _tick_path(4, 10)
    feed.truncated[path] = 1
    result = fetch(feed, cache, _utc(2019, 2, 4, 10), _utc(2019, 2, 4, 11))
    assert feed.requests[path] == 2
    assert (cache / path).read_bytes() == (dukascopy_dir / path).read_bytes()
    assert result.frame.equals(duka.read_file(dukascopy_dir / path))

    other = _tick_path(4, 11)
    feed.truncated[other] = 1000
    with pytest.raises(duka.DownloadError, match=r"invalid body.*truncated"):
        fetch(feed, cache, _utc(2019, 2, 4, 11), _utc(2019, 2, 4, 12), retries=1)
    assert feed.requests[other] == 2
    assert not (cache / other).exists()
    assert sorted(p.name for p in (cache / other).parent.iterdir()) == [
        "10h_ticks.bi5"
    ]  # no temp files


def test_cut_connection_is_retried(feed: Feed, cache: Path, dukascopy_dir: Path) -> None:
    path = _tick_path(5, 14)
    feed.cut_connection[path] = 2
    result = fetch(feed, cache, _utc(2019, 2, 5, 14), _utc(2019, 2, 5, 15))
    assert feed.requests[path] == 3
    assert result.frame.equals(duka.read_file(dukascopy_dir / path))


def test_connection_refused_is_retried_then_fails(cache: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on the port any more
    with pytest.raises(duka.DownloadError, match=r"after 2 attempt\(s\)") as info:
        duka.download(
            "EURUSD",
            "2019-02-04T00:00",
            "2019-02-04T01:00",
            cache_dir=cache,
            base_url=f"http://127.0.0.1:{port}/datafeed",
            progress=False,
            retries=1,
            backoff=0.001,
        )
    assert f"127.0.0.1:{port}/datafeed/EURUSD/2019/01/04/00h_ticks.bi5" in str(info.value)
    assert not cache.exists() or cached_files(cache) == set()


def test_empty_hour_counts_as_empty_not_failed(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    path = _tick_path(4, 5)
    feed.empty.add(path)
    result = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5))
    assert (result.files, result.downloaded, result.empty) == (24, 24, 1)
    assert (cache / path).stat().st_size == 0
    in_hour = result.frame.filter(pl.col("ts").dt.hour() == 5)
    assert in_hour.height == 0
    others = [p for p in DAY1 if p != path]
    assert result.frame.equals(direct(dukascopy_dir, others))

    feed.reset_counts()
    again = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5))
    assert (again.from_cache, again.downloaded, again.empty) == (24, 0, 1)
    assert sum(feed.requests.values()) == 0


def test_concurrency_is_bounded_by_workers(feed: Feed, cache: Path, tmp_path: Path) -> None:
    feed.delay = 0.03
    fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5), workers=3)
    assert 1 < feed.max_active <= 3  # parallel, never more than the workers
    feed.reset_counts()
    fetch(feed, tmp_path / "other", _utc(2019, 2, 5), _utc(2019, 2, 5, 6), workers=1)
    assert feed.max_active == 1


def test_rerun_after_a_failure_downloads_only_the_missing_files(feed: Feed, cache: Path) -> None:
    broken = _tick_path(5, 8)
    feed.not_found.add(broken)
    with pytest.raises(duka.DownloadError):
        fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 6), workers=2)
    done = cached_files(cache)
    assert broken not in done
    assert done < set(DAY1 + DAY2)

    feed.not_found.clear()
    feed.reset_counts()
    result = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 6), workers=2)
    assert set(feed.requests) == set(DAY1 + DAY2) - done
    assert set(feed.requests.values()) == {1}
    assert (result.downloaded, result.from_cache) == (48 - len(done), len(done))
    assert result.frame.height == 266_219


def test_a_corrupt_cache_file_is_reported_with_its_path(feed: Feed, cache: Path) -> None:
    path = cache / _tick_path(4, 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not lzma at all")
    with pytest.raises(DataError, match="corrupt LZMA") as info:
        fetch(feed, cache, _utc(2019, 2, 4, 2), _utc(2019, 2, 4, 3))
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# offline and load()


def test_offline_reads_the_cache_and_names_the_first_missing_file(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5))
    feed.reset_counts()
    offline = fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 5), offline=True)
    assert (offline.from_cache, offline.downloaded) == (24, 0)
    assert offline.frame.equals(direct(dukascopy_dir, DAY1))

    (cache / _tick_path(4, 7)).unlink()
    with pytest.raises(DataError, match="offline=True") as info:
        fetch(feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 6), offline=True)
    assert str(info.value).startswith(f"{cache / _tick_path(4, 7)}: ")
    assert "25 of 48" in str(info.value)
    assert sum(feed.requests.values()) == 0


def test_load_returns_the_frame_and_is_offline_by_default(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    options = {"cache_dir": cache, "base_url": feed.base_url, "progress": False}
    with pytest.raises(DataError, match="offline=True"):
        duka.load("EURUSD", "2019-01-10", "2019-01-20", timeframe="h1", **options)
    frame = duka.load(
        "EURUSD", "2019-01-10", "2019-01-20", timeframe="h1", offline=False, **options
    )
    hours = duka.read_file(dukascopy_dir / "EURUSD/2019/00/BID_candles_hour_1.bi5")
    assert frame.equals(hours.filter(pl.col("ts").dt.day().is_between(10, 19)))
    assert duka.load("EURUSD", "2019-01-10", "2019-01-20", timeframe="h1", **options).equals(frame)


def test_bad_arguments(cache: Path) -> None:
    with pytest.raises(ValueError, match="resample_bars"):
        duka.download("EURUSD", "2019-02-04", "2019-02-05", timeframe="4h", cache_dir=cache)
    with pytest.raises(ValueError, match="after start"):
        duka.download("EURUSD", "2019-02-05", "2019-02-04", cache_dir=cache)
    with pytest.raises(ValueError, match="ISO"):
        duka.download("EURUSD", "4 Feb 2019", "2019-02-05", cache_dir=cache)
    with pytest.raises(DataError, match="unknown instrument"):
        duka.download("BTCUSD", "2019-02-04", "2019-02-05", cache_dir=cache)
    with pytest.raises(ValueError, match="instrument name"):
        duka.download("../etc", "2019-02-04", "2019-02-05", cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# the still-running period


NOW = _utc(2019, 2, 5, 12, 30)  # Tuesday 12:30: the 12h tick file does not exist yet


def test_running_day_of_minutes_is_built_from_ticks(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    result = fetch(feed, cache, "2019-02-04", "2019-02-06", timeframe="m1", now=NOW)
    requested = {"EURUSD/2019/01/04/BID_candles_min_1.bi5", *DAY2[:12]}
    assert set(feed.requests) == requested
    assert (result.files, result.downloaded, result.incomplete) == (13, 13, 1)
    minutes = direct(
        dukascopy_dir,
        ["EURUSD/2019/01/04/BID_candles_min_1.bi5", "EURUSD/2019/01/05/BID_candles_min_1.bi5"],
    )
    # exact, volumes included: Dukascopy's minute is the float32 of the summed bid volumes
    assert result.frame.equals(minutes.filter(pl.col("ts") < _utc(2019, 2, 5, 12)))
    assert cached_files(cache) == requested  # the running day's minute file is never cached


def test_running_month_of_hours_is_built_from_minutes_and_ticks(
    feed: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    result = fetch(feed, cache, "2019-02-04", "2019-02-06", timeframe="h1", now=NOW)
    assert set(feed.requests) == {"EURUSD/2019/01/04/BID_candles_min_1.bi5", *DAY2[:12]}
    assert result.incomplete == 2  # February's hourly file and the 5th's minute file
    hours = duka.read_file(dukascopy_dir / "EURUSD/2019/01/BID_candles_hour_1.bi5")
    expected = hours.filter(
        (pl.col("ts") >= _utc(2019, 2, 4)) & (pl.col("ts") < _utc(2019, 2, 5, 12))
    )
    assert result.frame.equals(expected)
    assert "EURUSD/2019/01/BID_candles_hour_1.bi5" not in cached_files(cache)


@pytest.fixture
def feed_with_february_minutes(feed: Feed, dukascopy_dir: Path) -> Feed:
    """February 1st to 3rd have no minute files in the fixture: serve them, made from the hourly
    file (one minute candle per hour, at its first minute, carrying the hour's candle)."""
    hours = duka.read_file(dukascopy_dir / "EURUSD/2019/01/BID_candles_hour_1.bi5")
    for day in (1, 2, 3):
        start = _utc(2019, 2, day)
        of_day = hours.filter(pl.col("ts").dt.day() == day)
        minutes = of_day.select("ts", *OHLC, "volume")
        feed.extra[f"EURUSD/2019/01/{day:02d}/BID_candles_min_1.bi5"] = encode_candles(
            minutes, start, 100_000
        )
    return feed


def test_running_year_daily_bars_equal_the_daily_file(
    feed_with_february_minutes: Feed, cache: Path, dukascopy_dir: Path
) -> None:
    feed = feed_with_february_minutes
    result = fetch(feed, cache, "2019-01-28", "2019-02-06", timeframe="d1", now=NOW)
    # 2019's daily file is still open: January's hourly file, February's minute files up to the
    # 4th, the 5th's tick files up to 11h; none of the three running files is asked for or cached
    assert result.incomplete == 3
    minute_files = [f"EURUSD/2019/01/{day:02d}/BID_candles_min_1.bi5" for day in (1, 2, 3, 4)]
    requested = {"EURUSD/2019/00/BID_candles_hour_1.bi5", *minute_files, *DAY2[:12]}
    assert feed.requests == Counter(dict.fromkeys(requested, 1))
    assert cached_files(cache) == requested
    days = duka.read_file(dukascopy_dir / "EURUSD/2019/BID_candles_day_1.bi5")
    complete = result.frame.filter(pl.col("ts") < _utc(2019, 2, 5))
    expected = days.filter((pl.col("ts") >= _utc(2019, 1, 28)) & (pl.col("ts") < _utc(2019, 2, 5)))
    # Flat days (the Saturday) are flat candles at the last price as in the file; traded days
    # aggregate the traded hours only, as Dukascopy does.
    assert complete.equals(expected)
    hours = duka.read_file(dukascopy_dir / "EURUSD/2019/01/BID_candles_hour_1.bi5")
    morning = resample_bars(
        hours.filter((pl.col("ts") >= _utc(2019, 2, 5)) & (pl.col("ts") < _utc(2019, 2, 5, 12))),
        "1d",
    )
    running = result.frame.filter(pl.col("ts") == _utc(2019, 2, 5))
    assert running.select(OHLC).equals(morning.select(OHLC))


def test_a_range_in_the_future_is_empty(feed: Feed, cache: Path) -> None:
    result = fetch(feed, cache, "2019-03-01", "2019-03-02", timeframe="h1", now=NOW)
    assert (result.files, result.frame.height) == (0, 0)
    assert check_bars(result.frame) == []
    ticks = fetch(feed, cache, _utc(2019, 2, 5, 12), _utc(2019, 2, 5, 13), now=NOW)
    assert (ticks.files, ticks.frame.height) == (0, 0)
    assert sum(feed.requests.values()) == 0


def test_a_failure_stops_the_other_files_retries(feed: Feed, cache: Path) -> None:
    missing, failing = _tick_path(4, 0), _tick_path(4, 1)
    feed.not_found.add(missing)
    feed.errors[failing] = 1000
    # With a 60 s backoff, this test would hang if the failing file kept retrying after the 404.
    with pytest.raises(duka.DownloadError, match="HTTP 404"):
        fetch(
            feed, cache, _utc(2019, 2, 4), _utc(2019, 2, 4, 2), workers=2, retries=5, backoff=60.0
        )
    assert feed.requests[failing] <= 1
