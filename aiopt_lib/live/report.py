"""What notebook 06 shows about a paper-trading run: the live node's trades beside the backtest's,
the control events on the equity curve, the prediction latency per bar, and the answer in words.

A notebook's kernel runs its own event loop and the node needs the main thread (Nautilus
installs its SIGINT/SIGTERM handlers), so :func:`run_live_process` runs ``aiopt live`` in a
child process and reads back the :class:`~aiopt_lib.live.node.LiveResult` it saved.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import polars as pl
import yaml

from aiopt_lib.core.atomic import write_text_atomic
from aiopt_lib.core.errors import AioptError
from aiopt_lib.live.node import LiveResult
from aiopt_lib.strategy.spec import StrategySpec

__all__ = [
    "control_events",
    "latency_chart",
    "latency_summary",
    "live_equity_chart",
    "paper_trading_answer",
    "ranked_parity",
    "run_live_process",
    "trades_side_by_side",
    "write_live_config",
]


def write_live_config(path: str | Path, settings: Mapping[str, Any]) -> Path:
    """``settings`` (the sections of :class:`~aiopt_lib.live.config.LiveConfig`) as a YAML file
    at ``path`` (written whole or not at all)."""
    out = Path(path)
    plain = yaml.safe_dump(_plain(settings), sort_keys=False)
    write_text_atomic(out, plain)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_live_process(
    config_path: str | Path, *, timeout: float = 900, environ: Mapping[str, str] | None = None
) -> LiveResult:
    """Run ``aiopt live --config config_path`` in a child process and return the result it
    saved in the config's ``output_dir`` (module docstring). Raises
    :class:`~aiopt_lib.core.errors.AioptError` with the child's last error line when it fails."""
    from aiopt_lib.live.config import load_live_config

    env = dict(os.environ if environ is None else environ)
    config = load_live_config(config_path, environ=env)
    if config.output_dir is None:
        raise AioptError(f"{config_path}: set output_dir (where the child writes its result)")
    done = subprocess.run(
        [sys.executable, "-m", "aiopt_lib.runs.cli", "live", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise AioptError(
            f"aiopt live --config {config_path} failed (exit {done.returncode}): "
            f"{lines[-1] if lines else 'no message'}"
        )
    return LiveResult.load(config.output_dir)


def trades_side_by_side(
    live: pl.DataFrame, backtest: pl.DataFrame, *, tick: float = 1e-5
) -> pl.DataFrame:
    """The live node's trades next to the backtest's, matched by entry time and side (a full
    join: a trade only one of them made has nulls on the other side); ``same`` says whether the
    two agree (exit time and reason, prices within half a tick, PnL within a cent)."""
    keys = ["entry_ts", "side"]
    columns = ["exit_ts", "entry_price", "exit_price", "pnl", "exit_reason"]
    left = live.select(*keys, *(pl.col(c).alias(f"live {c}") for c in columns))
    right = backtest.select(*keys, *(pl.col(c).alias(f"backtest {c}") for c in columns))
    joined = left.join(right, on=keys, how="full", coalesce=True).sort("entry_ts")
    half = tick / 2 + 1e-12
    same = (
        (pl.col("live exit_ts") == pl.col("backtest exit_ts"))
        & (pl.col("live exit_reason") == pl.col("backtest exit_reason"))
        & ((pl.col("live entry_price") - pl.col("backtest entry_price")).abs() <= half)
        & ((pl.col("live exit_price") - pl.col("backtest exit_price")).abs() <= half)
        & ((pl.col("live pnl") - pl.col("backtest pnl")).abs() <= 0.01 + 1e-9)
    )
    return joined.with_columns(same.fill_null(False).alias("same"))


def ranked_parity(
    ranking: Sequence[tuple[StrategySpec, Mapping[str, Any]]],
    *,
    ranking_path: str | Path,
    bars: pl.DataFrame,
    data: Mapping[str, Any],
    live_dir: str | Path,
) -> tuple[dict[int, pl.DataFrame], dict[int, LiveResult], pl.DataFrame]:
    """Every ranked spec replayed untouched through the live node (``aiopt live`` in a child
    process each, no model, no commands; ``data``: the config's data section, which must replay
    exactly ``bars``) and compared with the vectorised backtest on ``bars``. Returns, by rank,
    the trades side by side (:func:`trades_side_by_side`) and the live results, and a table:
    rank, strategy, live and backtest trades and PnL, trades the same, identical."""
    from aiopt_lib.strategy.spec import backtest

    out = Path(live_dir)
    compared: dict[int, pl.DataFrame] = {}
    results: dict[int, LiveResult] = {}
    rows = []
    for spec, extra in ranking:
        rank = int(extra["rank"])
        config = write_live_config(
            out / f"untouched_{rank}.yaml",
            {
                "data": dict(data),
                "strategy": {"ranking": str(ranking_path), "rank": rank},
                "output_dir": out / f"untouched_{rank}",
            },
        )
        result = run_live_process(config)
        if result.bars != bars.height:
            raise AioptError(
                f"rank {rank}: the node replayed {result.bars} bars, not {bars.height}"
            )
        reference = backtest(bars, spec).trades
        side = trades_side_by_side(result.trades, reference, tick=spec.instrument_tick_size)
        compared[rank], results[rank] = side, result
        same = int(side["same"].sum())
        rows.append(
            {
                "rank": rank,
                "strategy": spec.name,
                "live trades": result.trades.height,
                "backtest trades": reference.height,
                "live PnL": float(result.trades["pnl"].sum()),
                "backtest PnL": float(reference["pnl"].sum()),
                "trades the same": same,
                "identical": same == side.height == reference.height == result.trades.height,
            }
        )
    return compared, results, pl.DataFrame(rows)


def control_events(result: LiveResult) -> pl.DataFrame:
    """The control commands of a run with their answers: data time (the bar they landed on),
    command, status and message."""
    events = result.events.filter(pl.col("event") == "command")
    cmd = (
        events["detail"]
        .map_elements(lambda d: _detail(d).get("cmd"), return_dtype=pl.String)
        .alias("command")
    )
    return events.select("ts", cmd, "status", "message", "command_id")


def _detail(text: str | None) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def latency_summary(predictions: pl.DataFrame) -> dict[str, float]:
    """Prediction latency per bar (ms, measured in the prediction actor's worker around the
    model call): count, p50, p90, p99 and max."""
    latency = predictions["latency_ms"].drop_nans().drop_nulls()
    if latency.len() == 0:
        return {"predictions": 0.0}
    return {
        "predictions": float(latency.len()),
        "p50_ms": float(latency.quantile(0.5)),
        "p90_ms": float(latency.quantile(0.9)),
        "p99_ms": float(latency.quantile(0.99)),
        "max_ms": float(latency.max()),
    }


def latency_chart(
    predictions: pl.DataFrame, *, title: str = "Prediction latency per bar"
) -> alt.Chart:
    """The model's latency for every bar it answered (ms, log scale), coloured by the model that
    answered: a switch shows as a change of colour."""
    frame = predictions.select("ts", "model_id", "latency_ms").filter(
        pl.col("latency_ms").is_finite() & (pl.col("latency_ms") > 0)
    )
    return (
        alt.Chart(frame)
        .mark_circle(size=10, opacity=0.6)
        .encode(
            x=alt.X("ts:T", title=None),
            y=alt.Y("latency_ms:Q", title="latency (ms)", scale=alt.Scale(type="log")),
            color=alt.Color("model_id:N", title="model", legend=alt.Legend(orient="top-left")),
        )
        .properties(width=760, height=220, title=title)
    )


def _equity(trades: pl.DataFrame, start: dt.datetime, capital: float, label: str) -> pl.DataFrame:
    """Realised equity: ``capital`` plus the PnL of the trades closed so far, stepped at exits."""
    closed = trades.sort("exit_ts").select(
        pl.col("exit_ts").alias("ts"), (capital + pl.col("pnl").cum_sum()).alias("equity")
    )
    first = pl.DataFrame(
        {"ts": [start], "equity": [capital]},
        schema={"ts": closed.schema["ts"], "equity": pl.Float64},
    )
    return pl.concat([first, closed]).with_columns(pl.lit(label).alias("run"))


def live_equity_chart(
    result: LiveResult,
    backtest_trades: pl.DataFrame,
    *,
    start: dt.datetime,
    capital: float,
    title: str,
) -> alt.LayerChart:
    """Realised equity of the live node and of the backtest on the same bars, with each control
    command as a labelled rule at the bar it landed on."""
    curves = pl.concat(
        [
            _equity(result.trades, start, capital, "live node"),
            _equity(backtest_trades, start, capital, "backtest"),
        ]
    )
    lines = (
        alt.Chart(curves)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("ts:T", title=None),
            y=alt.Y("equity:Q", title="realised equity (USD)", scale=alt.Scale(zero=False)),
            color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top-left")),
            strokeDash=alt.StrokeDash("run:N", legend=None),
        )
    )
    events = control_events(result).select("ts", "command", "status")
    if events.height == 0:
        return alt.layer(lines).properties(width=760, height=300, title=title)
    rules = alt.Chart(events).mark_rule(color="#b03a2e", strokeDash=[4, 3]).encode(x="ts:T")
    labels = (
        alt.Chart(events)
        .mark_text(align="left", dx=4, dy=-130, color="#b03a2e", fontSize=11)
        .encode(x="ts:T", text="command:N")
    )
    return alt.layer(lines, rules, labels).properties(width=760, height=300, title=title)


def paper_trading_answer(
    ranked: pl.DataFrame, operated: pl.DataFrame, events: pl.DataFrame, latency: dict[str, float]
) -> str:
    """The page's answer, from the run: whether the live node traded every ranked strategy as
    the backtest (``ranked``: :func:`ranked_parity`'s table), where the operated run's trades
    (``operated``: side by side with the backtest) first part from the backtest's and why, how
    the commands were answered, and the prediction latency."""
    n_identical = int(ranked["identical"].sum())
    trades = int(ranked["backtest trades"].sum())
    if ranked.height and n_identical == ranked.height:
        head = (
            f"Yes: replayed through the live TradingNode, all {ranked.height} ranked strategies "
            f"trade as the backtest (all {trades} trades equal: entry and exit bar, side, reason, "
            "prices to the tick, PnL to the cent)"
        )
    else:
        head = (
            f"No: replayed through the live TradingNode, only {n_identical} of {ranked.height} "
            "ranked strategies trade as the backtest"
        )
    changed = events.filter(pl.col("command") == "set_params")
    first_diff = operated.filter(~pl.col("same"))
    if first_diff.height and changed.height:
        when = first_diff["entry_ts"][0]
        at = changed["ts"][0]
        part = (
            f"; under control, the run's trades first part from the backtest's at {when:%Y-%m-%d %H:%M}, "
            + ("after" if when >= at else "before")
            + f" the parameter change at {at:%Y-%m-%d %H:%M}"
        )
    elif first_diff.height:
        part = f"; under control, {first_diff.height} trades differ from the backtest's"
    else:
        part = "; under control, every trade still equals the backtest's"
    answered = events.filter(pl.col("status") == "ok").height
    commands = f"; {answered} of {events.height} commands were applied and acknowledged"
    speed = (
        f"; the model answered each bar in {latency['p50_ms']:.1f} ms (median), "
        f"{latency['p99_ms']:.1f} ms at the 99th percentile"
        if latency.get("predictions")
        else ""
    )
    return head + part + commands + speed + "."
