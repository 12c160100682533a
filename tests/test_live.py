"""The live node: the ranked spec in a nautilus_trader ``TradingNode`` fed by a replay of our
catalog, trading on Nautilus' sandbox venue, controlled over a real Redis server.

Parity: replaying bars through the live node gives the trades of the ``BacktestEngine`` and of
the vectorised engine (the same code in backtest and live, made a test). Control: commands
through the Redis stream are applied at the bar they arrive, acknowledged, logged, stored in the
state key and picked up by a restarted node; a malformed one is rejected and answered; a Redis
outage and a dead model are ridden out as configured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.execution.nautilus import first_difference, run_nautilus
from aiopt_lib.live.config import LiveConfig, load_live_config
from aiopt_lib.live.control import parse_command
from aiopt_lib.live.node import (
    LiveResult,
    build_live_node,
    build_live_session,
    live_session,
    run_live,
)
from aiopt_lib.live.predictors import FramePredictor, HttpPredictor, PredictionError
from aiopt_lib.strategy.search import builtin_template
from aiopt_lib.strategy.spec import backtest
from tests.redis_server import RedisServer, ensure_redis_server, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    # the last 900 bars of the sample: the lockbox end of the year, as notebook 06 replays it
    return load_sample().tail(900)


@pytest.fixture(scope="module")
def redis_executable() -> Path:
    found = ensure_redis_server()
    if found is None:
        pytest.fail(
            "redis-server is missing and could not be installed (apt-get install redis-server "
            "needs root and the Debian package lists)"
        )
    return found


@pytest.fixture
def redis_server(redis_executable: Path, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_executable, tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def gate_predictions(bars: pl.DataFrame, seed: int = 11) -> pl.DataFrame:
    """Random probabilities for ~90% of the bars (the gate closed on the others)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=bars.height)
    frame = pl.DataFrame(
        {
            "ts": bars["ts"],
            "prob_buy": probs[:, 0],
            "prob_sell": probs[:, 1],
            "prob_hold": probs[:, 2],
        }
    )
    return frame.filter(pl.Series(rng.random(bars.height) > 0.1))


def assert_same_trades(live: pl.DataFrame, reference: pl.DataFrame, what: str) -> None:
    assert live.schema == reference.schema
    diff = first_difference(reference, live)
    shown = slice(max((diff or 0) - 1, 0), (diff or 0) + 2)
    assert diff is None, (
        f"{what}: first differing trade #{diff} of {reference.height}/{live.height}\n"
        f"reference:\n{reference[shown]}\nlive:\n{live[shown]}"
    )


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize(
    "template", ["ema_cross", "bollinger_reversion", "pattern_rsi", "keltner_supertrend"]
)
def test_live_replay_trades_equal_backtest_engine_and_vectorised(
    bars: pl.DataFrame, template: str
) -> None:
    """Replayed through the live node (sandbox venue, drained after each quote, orders on the
    next open quote), every trade equals Nautilus' BacktestEngine and our vectorised engine:
    entry/exit bar, side, exit reason (stops and takes included), prices to the tick, PnL to
    the cent."""
    spec = builtin_template(template).spec
    live = run_live(LiveConfig(), spec=spec, bars=bars, timeout=120)
    assert live.bars == bars.height
    assert live.events["message"][-1] == "end of the replay"
    vectorised = backtest(bars, spec).trades
    engine = run_nautilus(bars, spec, mode="bar_by_bar")
    assert vectorised.height >= 3
    assert_same_trades(live.trades, engine, f"{template}: live vs BacktestEngine")
    assert_same_trades(live.trades, vectorised, f"{template}: live vs vectorised")
    # every fill was logged: one entry and one exit per trade
    assert live.fills.height == 2 * live.trades.height
    assert live.positions.filter(pl.col("event") == "closed").height == live.trades.height


def test_ai_gate_reads_the_model_once_per_bar_and_trades_as_the_backtest(
    bars: pl.DataFrame,
) -> None:
    """The AI-gate template: the prediction actor asks the model (a predictions frame, read by
    the bar's open time) once per bar in its worker thread; the strategy holds each bar until
    its answer is in, so the gate sees what the backtest's gate sees, also on the bars without
    a prediction."""
    spec = builtin_template("ai_gate").spec
    predictions = gate_predictions(bars)
    live = run_live(LiveConfig(), spec=spec, bars=bars, predictions=predictions, timeout=120)
    vectorised = backtest(bars, spec, predictions).trades
    engine = run_nautilus(bars, spec, predictions, mode="bar_by_bar")
    assert vectorised.height >= 3
    assert_same_trades(live.trades, engine, "ai_gate: live vs BacktestEngine")
    assert_same_trades(live.trades, vectorised, "ai_gate: live vs vectorised")
    # one prediction record per bar that had one, stamped with the bar's open time
    assert live.predictions.height == predictions.height
    assert live.predictions["ts"].to_list() == predictions["ts"].to_list()
    assert (live.predictions["latency_ms"] >= 0).all()
    np.testing.assert_allclose(live.predictions["prob_buy"], predictions["prob_buy"])


def test_realtime_pace_keeps_the_data_spacing_and_the_trades(bars: pl.DataFrame) -> None:
    """``pace: realtime`` at 3,600,000 data seconds per wall second: the 300 hourly bars take
    ~0.3 s or more of wall time, and the trades are still the backtest's."""
    spec = builtin_template("ema_cross").spec
    part = bars.head(300)
    config = LiveConfig(data={"pace": "realtime", "speed": 3_600_000})
    started = time.monotonic()
    live = run_live(config, spec=spec, bars=part, timeout=120)
    spanned = (part["ts"][-1] - part["ts"][0]).total_seconds() / 3_600_000
    assert time.monotonic() - started >= spanned
    assert_same_trades(live.trades, backtest(part, spec).trades, "realtime pace")


# ---------------------------------------------------------------------------------------------
# Control over Redis


def redis_entries(server: RedisServer, stream: str) -> list[dict[str, str]]:
    client = server.client()
    try:
        return [fields for _id, fields in client.xrange(stream)]
    finally:
        client.close()


def test_scripted_commands_over_redis_are_applied_at_their_bar_and_survive_a_restart(
    bars: pl.DataFrame, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Commands sent through the Redis control stream at given bars (the replay holds until each
    is acknowledged): a parameter change, a malformed command, a model switch, pause, resume and
    flatten. Each is acknowledged on ``<prefix>:acks`` and logged; trades before the parameter
    change are the backtest's; no position opens while paused; the state key holds the result
    and a restarted node trades with it."""
    spec = builtin_template("ai_gate").spec
    predictions = gate_predictions(bars, seed=5)
    prefix = "t-live"
    script = [
        {"at_bar": 300, "command": {"cmd": "set_params", "params": {"trend": 30}, "id": "p1"}},
        {"at_bar": 350, "command": {"cmd": "explode"}},
        {"at_bar": 400, "command": {"cmd": "switch_model", "model_id": "second"}},
        {"at_bar": 500, "command": {"cmd": "pause"}},
        {"at_bar": 650, "command": {"cmd": "resume"}},
        {"at_bar": 800, "command": {"cmd": "flatten"}},
    ]
    config = LiveConfig(
        control={"redis_url": redis_server.url, "prefix": prefix, "script": script},
        run_dir=tmp_path / "run",
    )
    live = run_live(config, spec=spec, bars=bars, predictions=predictions, timeout=120)

    acks = redis_entries(redis_server, f"{prefix}:acks")
    assert [a["status"] for a in acks] == ["ok", "rejected", "ok", "ok", "ok", "ok"]
    assert acks[0]["id"] == "p1" and "trend" in acks[0]["message"]
    assert "explode" in acks[1]["message"]
    ts = bars["ts"].to_list()
    # each command landed on its bar (the ack carries the data time of the quote the node was at)
    for ack, step in zip(acks, script, strict=True):
        bar = step["at_bar"]
        assert ts[bar].isoformat() <= ack["bar_ts"] < ts[bar + 1].isoformat(), (ack, bar)

    # before the parameter change: the backtest's trades exactly
    vectorised = backtest(bars, spec, predictions).trades
    before = live.trades.filter(pl.col("exit_ts") <= ts[300])
    assert before.height >= 1
    assert_same_trades(before, vectorised.head(before.height), "before the parameter change")
    # paused from bar 500 to 650: no entry from signals of bars 501..650 (entries at 502..651)
    entries = live.trades["entry_ts"].to_list()
    assert not [e for e in entries if ts[502] <= e <= ts[651]]
    assert [e for e in entries if e > ts[651]], "trading resumed after the pause"
    # flatten at bar 800: nothing held across it
    assert not live.trades.filter(
        (pl.col("entry_ts") <= ts[800]) & (pl.col("exit_ts") > ts[800])
    ).height
    # the model switch: the predictions of later bars come from the new model id
    by_model = dict(live.predictions.group_by("model_id").agg(pl.col("ts").min()).iter_rows())
    assert by_model["second"] > ts[400] and by_model["frame"] == predictions["ts"][0]

    # logged: events in the result, on Redis and in the run folder's Parquet streams
    commands = live.events.filter(pl.col("event") == "command")
    assert commands["status"].to_list() == [a["status"] for a in acks]
    assert len(redis_entries(redis_server, f"{prefix}:fills")) == live.fills.height > 0
    assert len(redis_entries(redis_server, f"{prefix}:predictions")) == live.predictions.height
    assert (tmp_path / "run" / "streams").is_dir()

    state = json.loads(redis_server.client().get(f"{prefix}:state"))
    assert state["params"]["trend"] == 30 and state["model_id"] == "second"
    assert state["paused"] is False and state["last_command_id"] == acks[-1]["command_id"]

    # a restarted node picks the state up: the stored params and model, commands after the last
    restarted = build_live_node(
        LiveConfig(control={"redis_url": redis_server.url, "prefix": prefix}),
        spec=spec,
        bars=bars.tail(50),
        predictions=predictions,
    )
    session = live_session(restarted.aiopt_session)
    try:
        assert session.spec.params["trend"] == 30
        assert session.predictor.model_id == "second"
        assert session.last_command_id == acks[-1]["command_id"]
    finally:
        session.close()


def test_scripted_commands_without_redis_go_through_the_in_process_channel(
    bars: pl.DataFrame,
) -> None:
    """No Redis configured (notebook 06 on a machine without redis-server): the scripted
    commands go through the same control actor in process, land on their bars, and a malformed
    one is rejected; the state is kept in the result."""
    spec = builtin_template("ema_cross").spec
    script = [
        {"at_bar": 200, "command": {"cmd": "set_params", "params": {"fast": 9}}},
        {"at_bar": 300, "command": {"cmd": "pause"}},
        {"at_bar": 310, "command": {"cmd": "nope"}},
    ]
    part = bars.head(600)
    live = run_live(LiveConfig(control={"script": script}), spec=spec, bars=part, timeout=120)
    commands = live.events.filter(pl.col("event") == "command")
    assert commands["status"].to_list() == ["ok", "ok", "rejected"]
    assert commands["command_id"].to_list() == ["local-1", "local-2", "local-3"]
    ts = part["ts"].to_list()
    assert commands["ts"].to_list() == [ts[200], ts[300], ts[310]]
    assert live.state["params"]["fast"] == 9 and live.state["paused"] is True
    assert not [e for e in live.trades["entry_ts"].to_list() if e >= ts[302]]


def test_commands_from_any_redis_client_and_malformed_ones(
    bars: pl.DataFrame, redis_server: RedisServer
) -> None:
    """Plain ``XADD``s from another client while the node runs (fields or one ``json`` field):
    good ones applied, malformed ones (no ``cmd``, unknown params, bad JSON) rejected with the
    reason on the acks stream; the node trades on to the end of the replay."""
    spec = builtin_template("ema_cross").spec
    prefix = "t-any"
    sent: list[str] = []

    config = LiveConfig(
        data={"pace": "realtime", "speed": 400_000},
        control={"redis_url": redis_server.url, "prefix": prefix},
    )
    session = build_live_session(config, spec=spec, bars=bars.head(600))

    def operator() -> None:
        # once the node reads the stream (it reads what is added after it starts) and trades
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            session.link.up and session.replay.bars_published >= 50
        ):
            time.sleep(0.01)
        client = redis_server.client()
        try:
            for fields in (
                {"cmd": "pause"},
                {"nothing": "here"},
                {"json": "{not json"},
                {"cmd": "set_params", "params": '{"no_such_param": 3}'},
                {"cmd": "resume"},
            ):
                sent.append(client.xadd("aiopt-control", fields))
        finally:
            client.close()

    thread = threading.Thread(target=operator)
    thread.start()
    live = session.run(timeout=120)
    thread.join()
    acks = {a["command_id"]: a for a in redis_entries(redis_server, f"{prefix}:acks")}
    assert [acks[i]["status"] for i in sent] == ["ok", "rejected", "rejected", "failed", "ok"]
    assert "cmd" in acks[sent[1]]["message"]
    assert "JSON" in acks[sent[2]]["message"]
    assert "no_such_param" in acks[sent[3]]["message"]
    assert live.events["message"][-1] == "end of the replay"
    assert live.bars == 600


def test_parse_command_names_the_problem() -> None:
    assert parse_command({b"cmd": b"flatten"}).cmd == "flatten"
    assert parse_command({"json": '{"cmd": "set_params", "params": {"fast": 9}}'}).params == {
        "fast": 9.0
    }
    with pytest.raises(ConfigError, match="params"):
        parse_command({"cmd": "set_params"})
    with pytest.raises(ConfigError, match=r"switch_model|cmd"):
        parse_command({"cmd": "switch_model"})


def test_a_redis_outage_is_ridden_out(
    bars: pl.DataFrame, redis_executable: Path, tmp_path: Path
) -> None:
    """Redis stops mid-run and comes back on the same port: the node trades on, says so
    (redis_down, redis_up events), keeps the records meanwhile and writes them and the state
    to the new server once it is back."""
    server = RedisServer(redis_executable, tmp_path / "redis")
    server.start()
    spec = builtin_template("ema_cross").spec
    part = bars.head(700)
    prefix = "t-outage"

    def outage() -> None:
        time.sleep(0.5)
        server.stop()
        time.sleep(1.0)
        server.start()

    thread = threading.Thread(target=outage)
    config = LiveConfig(
        data={"pace": "realtime", "speed": 1_000_000},
        control={"redis_url": server.url, "prefix": prefix},
    )
    try:
        thread.start()
        live = run_live(config, spec=spec, bars=part, timeout=120)
        thread.join()
        events = live.events["event"].to_list()
        assert "redis_down" in events
        assert events.index("redis_up", events.index("redis_down")) > 0
        assert_same_trades(live.trades, backtest(part, spec).trades, "through a Redis outage")
        # the fills after the restart (and those queued during the outage) are on the new server
        fills = redis_entries(server, f"{prefix}:fills")
        assert fills, "records written after Redis came back"
        assert json.loads(server.client().get(f"{prefix}:state"))["strategy"] == "ema_cross"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# A model that stops answering


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_http_predictor_reports_an_unreachable_server() -> None:
    predictor = HttpPredictor(unreachable_url(), "compact", timeout_s=0.5)
    window = load_sample().head(5)
    with pytest.raises(PredictionError, match="model server"):
        predictor.predict(window)
    predictor.close()


@pytest.mark.parametrize("policy", ["ungated", "flatten"])
def test_model_failure_policy(bars: pl.DataFrame, policy: str) -> None:
    """The model server is unreachable: ``ungated`` trades the rules without the AI gate (the
    trades of the backtest with the gate always open), ``flatten`` takes no position; both say
    so in a ``model_down`` event."""
    spec = builtin_template("ai_gate").spec
    part = bars.head(400)
    config = LiveConfig(
        model={
            "source": "http",
            "url": unreachable_url(),
            "model_id": "compact",
            "timeout_s": 0.5,
            "on_failure": policy,
        }
    )
    live = run_live(config, spec=spec, bars=part, timeout=120)
    down = live.events.filter(pl.col("event") == "model_down")
    assert down.height == 1 and json.loads(down["detail"][0])["policy"] == policy
    assert "is down" in down["message"][0]
    if policy == "flatten":
        assert live.trades.height == 0
    else:
        always_open = pl.DataFrame({"ts": part["ts"], "prob_buy": 1.0, "prob_sell": 1.0})
        reference = backtest(part, spec, always_open).trades
        assert reference.height >= 2
        assert_same_trades(live.trades, reference, "ungated")


# ---------------------------------------------------------------------------------------------
# Configuration and the command line


def test_config_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(
        "data: {max_bars: 100, pace: drain}\nstrategy: {template: ema_cross}\n"
        "control: {prefix: p1}\noutput_dir: out\n",
        encoding="utf-8",
    )
    env = {
        "AIOPT_LIVE__DATA__PACE": "realtime",
        "AIOPT_LIVE__DATA__SPEED": "7200",
        "AIOPT_REDIS_URL": "redis://127.0.0.1:1/0",
        "AIOPT_REDIS_PASSWORD": "s3cret",
    }
    config = load_live_config(path, environ=env)
    assert config.data.pace == "realtime" and config.data.speed == 7200
    assert config.data.max_bars == 100 and config.control.prefix == "p1"
    assert config.control.redis_url == "redis://127.0.0.1:1/0"
    assert config.output_dir == tmp_path / "out"
    assert config.redis_password.get_secret_value() == "s3cret"
    assert "s3cret" not in config.model_dump_json() and "s3cret" not in repr(config)

    path.write_text("control: {redis_password: x}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="environment only"):
        load_live_config(path, environ={})
    path.write_text("control: {redis_url: 'redis://:pw@127.0.0.1/0'}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="AIOPT_REDIS_PASSWORD"):
        load_live_config(path, environ={})
    path.write_text("data: {pace: warp}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="pace"):
        load_live_config(path, environ={})


def aiopt(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiopt_lib.runs.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        **kwargs,
    )


def test_cli_live_runs_a_replay_and_writes_its_result(tmp_path: Path) -> None:
    config = tmp_path / "live.yaml"
    config.write_text(
        "data: {max_bars: 400}\nstrategy: {template: ema_cross}\noutput_dir: out\n",
        encoding="utf-8",
    )
    done = aiopt("live", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "live: 400 bars" in done.stdout
    result = LiveResult.load(tmp_path / "out")
    assert result.bars == 400 and result.trades.height >= 1


def test_cli_live_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "live.yaml"
    config.write_text("data: {pace: warp}\n", encoding="utf-8")
    done = aiopt("live", "--config", str(config))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "pace" in done.stderr


def test_sigterm_stops_the_node_cleanly(tmp_path: Path) -> None:
    """SIGTERM mid-replay: the node stops, writes its result and exits 0."""
    config = tmp_path / "live.yaml"
    config.write_text(
        "data: {max_bars: 2000, pace: realtime, speed: 36000}\n"
        "strategy: {template: ema_cross}\noutput_dir: out\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "aiopt_lib.runs.cli", "live", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        # "live: ..." is said once the node is built, before it runs (Nautilus' log lines too)
        seen = [process.stdout.readline() for _ in range(1)]
        while not seen[-1].startswith("live:") and seen[-1] and len(seen) < 500:
            seen.append(process.stdout.readline())
        assert seen[-1].startswith("live: ema_cross"), seen
        time.sleep(3)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-2000:]
    result = LiveResult.load(tmp_path / "out")
    assert 0 < result.bars < 2000
    assert result.events["event"][-1] == "stopped"


def test_frame_predictor_switch_keeps_the_frame(bars: pl.DataFrame) -> None:
    predictions = gate_predictions(bars)
    first = FramePredictor(predictions)
    other = first.switch("other", None)
    window = bars.filter(pl.col("ts") == predictions["ts"][0])
    assert other.model_id == "other" and other.predict(window) == first.predict(window)


def test_the_model_server_dies_mid_run(bars: pl.DataFrame, tmp_path: Path) -> None:
    """A real ``aiopt serve`` answers the node's bars over HTTP (the AI gate reads it); the
    server is killed mid-run: the node keeps trading on the rules (``ungated``), says so once,
    and replays to the end."""
    from aiopt_lib.features.dataset import DatasetConfig, build_dataset
    from aiopt_lib.features.render import RenderSpec
    from aiopt_lib.features.splits import purged_split
    from aiopt_lib.models.base import load_sample_set
    from aiopt_lib.models.networks import LogisticBaseline
    from tests.serve_process import serve_process

    root = tmp_path / "dataset"
    build_dataset(load_sample().head(700), root, DatasetConfig(window=16))
    data = load_sample_set(root, spec=RenderSpec(width=40, height=32))
    split = purged_split(data.samples)
    model = LogisticBaseline()
    model.fit(data.take(split.train), data.take(split.validation))
    model.save(tmp_path / "logistic")
    spec = builtin_template("ai_gate").spec.with_params(gate=0.34)
    part = bars.head(700)
    with serve_process(
        [f"logistic={tmp_path / 'logistic'}", "--window", "16"], tmp_path / "serve.log"
    ) as server:
        config = LiveConfig(
            data={"pace": "realtime", "speed": 630_000},  # 700 hours in ~4 s
            model={
                "source": "http",
                "url": server.url,
                "model_id": "logistic",
                "history": 300,
                # a killed server refuses at once; the margin is for a starved CI machine
                "timeout_s": 10.0,
            },
        )

        session = build_live_session(config, spec=spec, bars=part)

        def kill() -> None:  # once the replay is well under way
            deadline = time.monotonic() + 60
            while session.replay.bars_published < 350 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(server.process.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill)
        killer.start()
        live = session.run(timeout=120)
        killer.join()
    assert live.bars == part.height
    assert live.events["message"][-1] == "end of the replay"
    events = live.events["event"].to_list()
    down = live.events.filter(pl.col("event") == "model_down")
    assert down.height >= 1 and "logistic" in down["message"][-1]
    # down for good after the kill: no "model_back" after the last "model_down"
    last_down = len(events) - 1 - events[::-1].index("model_down")
    assert "model_back" not in events[last_down:]
    answered = live.predictions.filter(pl.col("model_id") == "logistic")
    assert answered.height > 20, live.events.select("event", "message").rows()
    assert answered["ts"].max() < part["ts"][-1]
    assert live.trades.height >= 1
