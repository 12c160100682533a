"""Run a Pine Script strategy offline and compare its trades with the engine's.

:func:`run_pine_offline` executes a Pine v5/v6 strategy (e.g. from
:func:`aiopt_lib.pine.export.spec_to_pine`) on a bars frame without TradingView: the text is
transpiled to PyneCore Python by ``opencode-pine2pyne`` (Apache-2.0, pure Python) and run bar by
bar by PyneCore's ``ScriptRunner`` (``pynesys-pynecore``, Apache-2.0), whose broker emulator
reimplements TradingView's (order fills along the open-high-low-close path, ``strategy.exit``
brackets and trailing stops, ``slippage``, commissions). Everything happens in a working folder
(a temporary one by default); nothing is downloaded (PyneCore's own compiler, which calls a web
API, is not used, nor the ``pyne`` CLI).

The closed trades come back in the schema of :func:`aiopt_lib.strategy.backtest.run_backtest`'s trades
frame, so :func:`compare_trades` can hold the two side by side::

    text = spec_to_pine(spec, version=6)
    theirs = run_pine_offline(text, bars)
    report = compare_trades(backtest(bars, spec).trades, theirs, spec.instrument_tick_size)
    report.equal == report.total_ours == report.total_theirs

How the trades are read
-----------------------
* ``entry_ts`` / ``exit_ts``: the open time of the bar in which the fill happened (PyneCore's
  ``entry_time`` / ``exit_time``, the bar's ``time``), as in the engine;
* ``pnl`` is TradingView's trade profit (after both commissions), ``costs`` the commission,
  ``return`` ``pnl / (entry_price * quantity)``, ``bars_held`` exit minus entry ``bar_index``;
* ``exit_reason`` from the closing order: ``strategy.close`` / ``strategy.close_all`` ->
  ``"signal"``; an opposite ``strategy.entry`` (its id is an entry id) -> ``"reverse"``; a
  ``strategy.exit`` bracket -> the leg that filled. Before the run :func:`label_exit_legs` gives
  every ``strategy.exit`` call without leg comments ``comment_loss="stop"``,
  ``comment_profit="take"``, ``comment_trailing="trail"`` (comments move no order), so the exit
  comment names the leg. For a call with comments of its own the reason is read from the price
  and the legs the script gives that exit id: at or worse than the entry ``"stop"``; better
  ``"take"`` (a profit leg, no trailing leg), ``"trail"`` (a trailing leg, no profit leg), null
  (both). A trailing stop that never activated (the price did not reach its activation level)
  exits by the fixed ``loss=`` stop, ``"stop"``, where the engine, whose trail starts at the
  fill, says ``"trail"`` for a spec without a separate stop-loss;
* a position still open after the last bar stays open (TradingView's behaviour) and is not
  returned; the engine closes it with reason ``"end"``, which :func:`compare_trades` leaves out.

The symbol
----------
The chart is the main ``open``/``high``/``low``/``close``/``volume`` columns (the bid where
the frame holds both sides), as on TradingView. PyneCore needs a ``syminfo``: ``symbol``
(default ``"EURUSD"``; a six-letter FX pair is typed ``forex`` with its quote currency as the
account currency), the tick ``syminfo.mintick`` (``tick_size``; by default the value a
:func:`~aiopt_lib.pine.export.spec_to_pine` script asserts in its ``runtime.error`` guard, else the
coarsest decimal grid all prices sit on, :func:`price_tick`), ``pointvalue`` 1 and
``mincontract`` 1 (one contract = one unit, as the export assumes), the session 24 hours on
every day (an FX feed's weekend gap simply has no bars) and the timeframe of ``bars``.

Parity with the engine (EUR/USD 2017 hourly sample, ``tests/test_pine_exec.py``)
------------------------------------------------------------------------------
* Identical trades (times, sides, prices, pnl), Pine v5 and v6, for plain signal strategies,
  ATR stop-loss / take-profit, a percent stop and the ATR trailing stop of the built-in
  templates, with no spread, commission per unit and slippage in ticks; and for market orders
  with a spread whose half is a whole number of ticks (exported as extra slippage).
* With a spread, a stop is not exact: the engine triggers a long's sell stop on the bid and fills
  it at the level less the slippage; TradingView triggers on the chart's price and moves the
  fill by all of the exported slippage, the half spread included: the exit is half a spread
  worse (and triggers half a spread later). Exporting ``loss=`` half a spread (in ticks) nearer
  the entry makes stops and trailing stops exact; a take-profit (a limit order, no slippage)
  then still triggers half a spread early on TradingView and fills at the chart's open, not
  the exit side's, when the bar gaps through it.
* Exit reasons agree except a trailing stop that never activated (see above).
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.bars import TS_DTYPE, ensure_bars, infer_timeframe
from aiopt_lib.core.errors import ConfigError
from aiopt_lib.strategy.backtest import TRADES_SCHEMA

TRADE_COLUMNS: tuple[str, ...] = (
    "entry_ts",
    "exit_ts",
    "side",
    "entry_price",
    "exit_price",
    "quantity",
    "pnl",
    "return",
    "costs",
    "exit_reason",
    "bars_held",
)
_TRADES_SCHEMA: dict[str, Any] = TRADES_SCHEMA
_BRACKET_REASONS = frozenset({"stop", "take", "trail"})
# the tick a spec_to_pine script asserts: `math.abs(syminfo.mintick - 0.00001) > ...`
_MINTICK_GUARD = re.compile(r"syminfo\.mintick\s*-\s*([0-9][0-9.eE+-]*)\s*\)")
_EXIT_CALL = re.compile(r"strategy\.exit\(\s*\"([^\"]*)\"([^\n]*)")
_ENTRY_CALL = re.compile(r"strategy\.(?:entry|order)\(\s*\"([^\"]*)\"")


class PineExecError(ConfigError):
    """A Pine script that cannot be transpiled or run offline; the message carries the
    transpiler's or PyneCore's error text."""


@dataclass(frozen=True)
class PineRun:
    """One offline run: the ``trades`` (engine schema), the transpiled PyneCore ``python``
    source, the ``tick_size`` used as ``syminfo.mintick``, the seconds spent transpiling and
    running, and the ``workdir`` the script was written to (None: a removed temporary folder)."""

    trades: pl.DataFrame
    python: str
    tick_size: float
    transpile_seconds: float
    run_seconds: float
    workdir: Path | None


@dataclass(frozen=True)
class ParityReport:
    """Trades compared (:func:`compare_trades`): ``equal`` pairs that match (times, side,
    quantity, prices within half a tick, pnl within half a tick times the quantity),
    ``total_ours`` / ``total_theirs`` trades on each side, ``equal_prefix`` how many pairs, in
    time order, match before the first difference, ``first_difference`` (None when every pair
    matched) ``{"index": i, "ours": row | None, "theirs": row | None, "fields": [...]}`` and
    ``reason_differences`` the matching pairs whose ``exit_reason`` differ (where both say
    one)."""

    equal: int
    total_ours: int
    total_theirs: int
    equal_prefix: int
    first_difference: dict[str, Any] | None
    reason_differences: int = 0

    @property
    def identical(self) -> bool:
        """Every trade on both sides matched."""
        return self.first_difference is None


# ---------------------------------------------------------------------------------------------
# The symbol


def pine_mintick(pine_text: str) -> float | None:
    """The tick size a :func:`~aiopt_lib.pine.export.spec_to_pine` script asserts (its
    ``syminfo.mintick`` guard), or None for a script without that guard."""
    match = _MINTICK_GUARD.search(pine_text)
    return float(match.group(1)) if match else None


def price_tick(bars: pl.DataFrame, max_decimals: int = 8) -> float:
    """The coarsest decimal tick ``10**-d`` (``d <= max_decimals``) every open/high/low/close of
    ``bars`` sits on (within a millionth of that tick)."""
    prices = pl.concat([bars.get_column(c) for c in ("open", "high", "low", "close")]).to_numpy()
    for decimals in range(max_decimals + 1):
        scaled = prices * 10.0**decimals
        if float(abs(scaled - scaled.round()).max(initial=0.0)) < 1e-6:
            return 10.0**-decimals
    return 10.0**-max_decimals


def tradingview_period(timeframe: dt.timedelta) -> str:
    """A bar length as TradingView writes ``timeframe.period``: ``"30S"``, ``"15"``
    (minutes), ``"60"``, ``"1D"``, ``"1W"``."""
    seconds = int(timeframe.total_seconds())
    if seconds <= 0:
        raise ConfigError(f"timeframe must be positive, got {timeframe}")
    if seconds % 604_800 == 0:
        return f"{seconds // 604_800}W"
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400}D"
    if seconds % 60 == 0:
        return str(seconds // 60)
    return f"{seconds}S"


def _syminfo(symbol: str, tick: float, period: str) -> Any:
    from pynecore.core.syminfo import SymInfo, SymInfoInterval, SymInfoSession

    name = symbol.upper()
    is_fx = len(name) == 6 and name.isalpha()
    hours = [SymInfoInterval(day, dt.time(0, 0, 0), dt.time(23, 59, 59)) for day in range(7)]
    decimals = max(0, round(-math.log10(tick)))
    return SymInfo(
        prefix="AIOPT",
        description=name,
        ticker=name,
        currency=name[3:] if is_fx else "USD",
        basecurrency=name[:3] if is_fx else None,
        period=period,
        type="forex" if is_fx else "other",
        mintick=tick,
        pricescale=10**decimals,
        minmove=max(1, round(tick * 10**decimals)),
        pointvalue=1.0,
        mincontract=1.0,
        opening_hours=hours,
        session_starts=[SymInfoSession(h.day, h.start) for h in hours],
        session_ends=[SymInfoSession(h.day, h.end) for h in hours],
        timezone="UTC",
    )


# ---------------------------------------------------------------------------------------------
# Running


def transpile_pine(pine_text: str) -> str:
    """PyneCore Python for a Pine v5/v6 script (``pine2pyne.transpile``); raises
    :class:`PineExecError` with the transpiler's message when it cannot."""
    import pine2pyne

    try:
        python = pine2pyne.transpile(pine_text)
    except pine2pyne.Pine2PyneError as exc:
        raise PineExecError(f"pine2pyne cannot transpile the script: {exc}") from exc
    if not python.strip():
        raise PineExecError("the Pine script is empty (comments only)")
    return python


_LEG_COMMENTS = (
    ("comment_loss", "stop"),
    ("comment_profit", "take"),
    ("comment_trailing", "trail"),
)


def label_exit_legs(python: str) -> str:
    """``python`` (transpiled PyneCore source) with ``comment_loss="stop"``,
    ``comment_profit="take"``, ``comment_trailing="trail"`` added to every ``strategy.exit``
    call that sets none of the three, so each closed trade says which leg filled it. The
    comments change no order; the rest of the source is left byte for byte."""
    tree = ast.parse(python)
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func
        if not (
            target.attr == "exit"
            and isinstance(target.value, ast.Name)
            and target.value.id == "strategy"
        ):
            continue
        if any(k.arg in dict(_LEG_COMMENTS) for k in node.keywords):
            continue
        calls.append(node)
    lines = python.splitlines(keepends=True)
    extra = "".join(f", {name}={value!r}" for name, value in _LEG_COMMENTS).encode()
    # after the call's last argument (a trailing comma or a line break may follow it), right to
    # left so that earlier positions stay valid; col offsets count UTF-8 bytes
    ends = []
    for node in calls:
        last = max([*node.args, *node.keywords], key=lambda a: (a.end_lineno, a.end_col_offset))
        ends.append((last.end_lineno, last.end_col_offset))
    for line_no, col in sorted(ends, reverse=True):
        line = lines[line_no - 1].encode()
        lines[line_no - 1] = (line[:col] + extra + line[col:]).decode()
    return "".join(lines)


def _ohlcv(bars: pl.DataFrame) -> list[Any]:
    from pynecore.types.ohlcv import OHLCV

    frame = bars.select(
        pl.col("ts").dt.epoch("ms").alias("ms"), "open", "high", "low", "close", "volume"
    )
    return [OHLCV(*row) for row in frame.iter_rows()]


def _exit_legs(pine_text: str) -> dict[str, set[str]]:
    """For each ``strategy.exit`` id of the script, the legs its calls give: ``"stop"``
    (``loss=`` / ``stop=``), ``"take"`` (``profit=`` / ``limit=``), ``"trail"`` (``trail_*=``)."""
    legs: dict[str, set[str]] = {}
    for exit_id, arguments in _EXIT_CALL.findall(pine_text):
        found = legs.setdefault(exit_id, set())
        if re.search(r"\b(loss|stop)\s*=", arguments):
            found.add("stop")
        if re.search(r"\b(profit|limit)\s*=", arguments):
            found.add("take")
        if re.search(r"\btrail_(offset|points|price)\s*=", arguments):
            found.add("trail")
    return legs


def _exit_reason(
    trade: Any, entry_ids: set[str], legs: Mapping[str, set[str]], sign: float
) -> str | None:
    exit_id = str(trade.exit_id or "")
    comment = str(trade.exit_comment or "")
    if exit_id.startswith(("Close entry(s) order", "Close position order")):
        return "signal"
    if exit_id in entry_ids:
        return "reverse"
    if comment in _BRACKET_REASONS:
        return comment
    if sign * (float(trade.exit_price) - float(trade.entry_price)) <= 0.0:
        return "stop"
    exit_legs = legs.get(exit_id, set())
    if "take" in exit_legs and "trail" not in exit_legs:
        return "take"
    if "trail" in exit_legs and "take" not in exit_legs:
        return "trail"
    return None


def _trades_frame(closed: list[Any], pine_text: str) -> pl.DataFrame:
    entry_ids = set(_ENTRY_CALL.findall(pine_text))
    legs = _exit_legs(pine_text)
    rows: dict[str, list[Any]] = {name: [] for name in TRADE_COLUMNS}
    for trade in closed:
        sign = 1.0 if trade.size > 0 else -1.0
        quantity = abs(float(trade.size))
        entry_price, exit_price = float(trade.entry_price), float(trade.exit_price)
        pnl = float(trade.profit)
        rows["entry_ts"].append(int(trade.entry_time))
        rows["exit_ts"].append(int(trade.exit_time))
        rows["side"].append("long" if sign > 0 else "short")
        rows["entry_price"].append(entry_price)
        rows["exit_price"].append(exit_price)
        rows["quantity"].append(quantity)
        rows["pnl"].append(pnl)
        rows["return"].append(pnl / (entry_price * quantity) if entry_price * quantity else None)
        rows["costs"].append(float(trade.commission))
        rows["exit_reason"].append(_exit_reason(trade, entry_ids, legs, sign))
        rows["bars_held"].append(int(trade.exit_bar_index) - int(trade.entry_bar_index))
    frame = pl.DataFrame(rows, schema={**_TRADES_SCHEMA, "entry_ts": pl.Int64, "exit_ts": pl.Int64})
    # PyneCore's times are epoch milliseconds of the fill bar's open
    return frame.with_columns(
        pl.col("entry_ts", "exit_ts").cast(pl.Datetime("ms", "UTC")).cast(TS_DTYPE)
    )


@contextmanager
def _folder(path: Path | None) -> Iterator[Path]:
    """The given folder (created), or a temporary one removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="aiopt_pine_") as temporary:
        yield Path(temporary)


def _without_pyne_import_hook() -> Any:
    """Remove PyneCore's import hook from ``sys.meta_path`` and return it (None if absent).

    Importing PyneCore installs a finder in front of Python's own that loads any module from its
    ``.py`` file: a C extension with a pure-Python fallback imported later in the same process
    (pyzmq's ``zmq.backend.cython._zmq``, so Jupyter and papermill) gets the fallback and fails.
    The hook is put back only while a script runs (:func:`_pyne_import_hook`)."""
    from pynecore.core import import_hook

    found = None
    for finder in list(sys.meta_path):
        if isinstance(finder, import_hook.PyneImportHook):
            sys.meta_path.remove(finder)
            found = finder
    return found


@contextlib.contextmanager
def _pyne_import_hook() -> Iterator[None]:
    hook = _without_pyne_import_hook()
    if hook is None:
        from pynecore.core import import_hook

        hook = import_hook.PyneImportHook()
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        _without_pyne_import_hook()


def run_pine(
    pine_text: str,
    bars: pl.DataFrame,
    *,
    workdir: Path | None = None,
    symbol: str = "EURUSD",
    tick_size: float | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> PineRun:
    """Transpile ``pine_text`` and run it on ``bars`` with PyneCore, offline: the closed trades
    and the run's details (:class:`PineRun`). See :func:`run_pine_offline`."""
    from pynecore.core.script_runner import ScriptRunner, script_module_name

    _without_pyne_import_hook()
    bars = ensure_bars(bars)
    timeframe = infer_timeframe(bars)
    if timeframe is None:
        raise ConfigError("run_pine needs at least two bars")
    tick = tick_size if tick_size is not None else pine_mintick(pine_text) or price_tick(bars)
    started = time.perf_counter()
    python = label_exit_legs(transpile_pine(pine_text))
    transpile_seconds = time.perf_counter() - started
    syminfo = _syminfo(symbol, tick, tradingview_period(timeframe))
    feed = _ohlcv(bars)
    with _folder(workdir) as folder:
        script_path = folder / "strategy_script.py"
        write_text_atomic(script_path, python)
        started = time.perf_counter()
        closed: list[Any] = []
        with _pyne_import_hook():
            try:
                runner = ScriptRunner(
                    script_path,
                    feed,
                    syminfo,
                    inputs=dict(inputs) if inputs else None,
                    lossless_prices=True,  # float64 prices straight from the frame: nothing to clean
                    lossless_volume=True,
                )
                # the runner yields (bar, plots, trades closed on that bar) for a strategy
                for item in runner.run_iter(copy_results=False):
                    if len(item) == 3:
                        closed.extend(item[2])
            except Exception as exc:  # PyneCore's runtime errors carry no common base class
                raise PineExecError(
                    f"PyneCore could not run the script: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                # each run imports the script afresh under its path's digest: drop the module
                sys.modules.pop(script_module_name(script_path), None)
        run_seconds = time.perf_counter() - started
    trades = _trades_frame(closed, pine_text)
    return PineRun(trades, python, tick, transpile_seconds, run_seconds, workdir)


def run_pine_offline(
    pine_text: str,
    bars: pl.DataFrame,
    *,
    workdir: Path | None = None,
    symbol: str = "EURUSD",
    tick_size: float | None = None,
) -> pl.DataFrame:
    """Run a Pine v5/v6 strategy on ``bars`` offline (pine2pyne + PyneCore, module docstring)
    and return its closed trades in the engine's trades schema (``entry_ts``, ``exit_ts`` = open
    time of the fill bar, ``side``, ``entry_price``, ``exit_price``, ``quantity``, ``pnl``,
    ``return``, ``costs``, ``exit_reason``, ``bars_held``).

    ``workdir``: where the transpiled script (and PyneCore's settings file beside it) is written
    and kept; None: a temporary folder, removed afterwards. ``symbol`` and ``tick_size`` make the
    chart's ``syminfo`` (``tick_size`` None: the script's mintick guard, else the prices' decimal
    grid). Raises :class:`PineExecError` with the transpiler's or PyneCore's message when the
    script cannot be transpiled or run (e.g. its ``runtime.error`` fires).
    """
    return run_pine(pine_text, bars, workdir=workdir, symbol=symbol, tick_size=tick_size).trades


# ---------------------------------------------------------------------------------------------
# Comparing


def _keyed_rows(frame: pl.DataFrame) -> dict[tuple[Any, int], dict[str, Any]]:
    """The rows by ``(entry_ts, n)``, n counting trades that enter in the same bar."""
    frame = frame.sort("entry_ts", maintain_order=True)
    rows: dict[tuple[Any, int], dict[str, Any]] = {}
    for row in frame.iter_rows(named=True):
        n = 0
        while (row["entry_ts"], n) in rows:
            n += 1
        rows[(row["entry_ts"], n)] = row
    return rows


def _differing_fields(ours: Mapping[str, Any], theirs: Mapping[str, Any], tick: float) -> list[str]:
    fields = [c for c in ("entry_ts", "exit_ts", "side") if ours[c] != theirs[c]]
    if not math.isclose(ours["quantity"], theirs["quantity"], rel_tol=1e-9):
        fields.append("quantity")
    for column in ("entry_price", "exit_price"):
        if not abs(ours[column] - theirs[column]) < tick / 2:
            fields.append(column)
    if not abs(ours["pnl"] - theirs["pnl"]) < tick / 2 * max(ours["quantity"], 1.0):
        fields.append("pnl")
    return fields


def compare_trades(
    ours: pl.DataFrame, theirs: pl.DataFrame, tick: float, *, drop_end: bool = True
) -> ParityReport:
    """Compare two trades frames trade by trade (:class:`ParityReport`).

    Trades are paired by entry bar (``entry_ts``; a second trade entering in the same bar pairs
    with the other side's second), in time order. A pair is equal when ``exit_ts``, ``side`` and
    ``quantity`` are equal and the entry and exit prices differ by less than half a ``tick``
    (``pnl`` by less than half a tick times the quantity). A trade without a partner is a
    difference (``fields == ["missing"]``, the absent side None). ``drop_end``: leave out
    ``ours``' trades closed at the end of the data (``exit_reason == "end"``): TradingView keeps
    that position open. ``exit_reason`` is not part of equality; equal pairs whose reasons
    differ (where both give one) are counted in ``reason_differences``.
    """
    if tick <= 0:
        raise ConfigError(f"tick must be positive, got {tick}")
    if drop_end and "exit_reason" in ours.columns:
        ours = ours.filter(pl.col("exit_reason").fill_null("") != "end")
    by_ours, by_theirs = _keyed_rows(ours), _keyed_rows(theirs)
    equal = reasons = 0
    equal_prefix: int | None = None
    first: dict[str, Any] | None = None
    for index, key in enumerate(sorted(by_ours.keys() | by_theirs.keys())):
        a, b = by_ours.get(key), by_theirs.get(key)
        fields = _differing_fields(a, b, tick) if a is not None and b is not None else ["missing"]
        if fields:
            if first is None:
                equal_prefix = index
                first = {"index": index, "ours": a, "theirs": b, "fields": fields}
            continue
        equal += 1
        reason_a, reason_b = (a or {}).get("exit_reason"), (b or {}).get("exit_reason")
        if reason_a is not None and reason_b is not None and reason_a != reason_b:
            reasons += 1
    return ParityReport(
        equal=equal,
        total_ours=ours.height,
        total_theirs=theirs.height,
        equal_prefix=equal if equal_prefix is None else equal_prefix,
        first_difference=first,
        reason_differences=reasons,
    )


__all__ = [
    "ParityReport",
    "PineExecError",
    "PineRun",
    "compare_trades",
    "label_exit_legs",
    "pine_mintick",
    "price_tick",
    "run_pine",
    "run_pine_offline",
    "tradingview_period",
    "transpile_pine",
]
