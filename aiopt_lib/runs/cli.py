"""The ``aiopt`` command line.

    aiopt data info FILE            what a data file holds
    aiopt data validate FILE        the validation report; exit 0 clean (or only expected gaps), 1 problems
    aiopt data dukascopy SYMBOL     download (or read from the cache) Dukascopy data into Parquet
    aiopt data aggregate MIRROR --out ROOT
                                    a tick mirror -> the 1-minute bars dataset (symbol=/year=),
                                    streaming file by file, resumable
    aiopt features FILE --out OUT   bars + all indicators at default parameters + pattern flags
    aiopt dataset build --bars FILE --out DIR [--config FILE]
                                    the labelled, schema-versioned sample dataset (Parquet, zstd)
    aiopt dataset images --dataset DIR [--mode folder|column]
                                    the chart image of every sample (resumable)
    aiopt search --template NAME|FILE --out DIR [--storage URL] [--workers N] [--ray [ADDRESS]]
                                    walk-forward Optuna search of a strategy template; writes the
                                    ranking (top 5 + DSR/PBO), the trials and the out-of-sample equity
    aiopt pine export --ranking FILE --out DIR [--version 5|6]
                                    the ranked strategies as TradingView Pine Script, validated
    aiopt pine check FILE.pine [--fix]
                                    syntax and semantic checks with line:column; exit 1 on errors
    aiopt run --config FILE         execute the notebooks of a run with papermill, render HTML reports
    aiopt batch FILE [--workers N] [--ray [ADDRESS] [--ship]] [--rerun]
                                    a grid or list of runs in parallel (processes or Ray tasks),
                                    finished runs skipped, and a comparison page
    aiopt finetune JOB.yaml [--nproc N]
                                    LoRA fine-tuning of the vision-language model, data-parallel
                                    (one process per GPU; torchrun + accelerate DDP)
    aiopt serve MODEL_DIR [...]     the saved signal models over HTTP (LitServe: /predict, /models,
                                    /health; dynamic batching; see aiopt serve --help)
    aiopt live --config FILE        paper-trade a ranked strategy in a nautilus_trader TradingNode
                                    (replay + sandbox venue; Redis control; AIOPT_* variables)

Errors print one line (``aiopt: error: ...``) and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import ValidationError

from aiopt_lib import __version__
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import AioptError, ConfigError, validation_problems

# The other aiopt_lib modules are imported inside the functions below, on purpose: each pulls in
# polars and most numba, Optuna or SQLAlchemy, so importing them here would make `aiopt --help`
# take ~1.2 s instead of ~0.1 s; a command imports only the stages it runs.

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a CSV, Parquet or .bi5 file, a Dukascopy cache folder, or 'sample'"
    )
    parser.add_argument(
        "--format", help="force the format: dukascopy_csv, histdata, mt4, mt5, generic, parquet"
    )
    parser.add_argument("--symbol", help="instrument, e.g. EURUSD (Dukascopy folders need it)")
    parser.add_argument(
        "--timeframe", help="bar timeframe, e.g. 1m, 1h (ticks are aggregated to it)"
    )
    parser.add_argument(
        "--side", choices=["bid", "ask", "mid", "both"], help="price side where the source has both"
    )
    parser.add_argument(
        "--tz", help="time zone of naive timestamps in the file (default: the format's, else UTC)"
    )
    parser.add_argument("--start", help="first time to keep (inclusive), ISO")
    parser.add_argument("--end", help="time to stop at (exclusive), ISO")
    _reader_options(parser)


def _reader_options(parser: argparse.ArgumentParser, *, format_and_tz: bool = False) -> None:
    """How to read a file: --columns and --time-format (and --format, --tz where not yet there)."""
    if format_and_tz:
        parser.add_argument(
            "--format", help="force the format: dukascopy_csv, histdata, mt4, mt5, generic, parquet"
        )
        parser.add_argument(
            "--tz",
            help="time zone of naive timestamps in the file (default: the format's, else UTC)",
        )
    parser.add_argument(
        "--columns",
        metavar="KEY=NAME,...",
        help="name the file's columns, e.g. 'ts=Date,close=Adj Close' (keys: ts, open, high, low, "
        "close, volume, bid_*, ask_*, spread; ts=Date+Time for a date and a time column, "
        "#N for the N-th column)",
    )
    parser.add_argument(
        "--time-format", help="strftime pattern of the timestamps, e.g. '%%d/%%m/%%Y %%H:%%M'"
    )


def _parse_columns(text: str) -> dict[str, object]:
    """``ts=Date,close=Adj Close`` -> ``{"ts": "Date", "close": "Adj Close"}``; ``ts=D+T`` is a pair."""
    mapping: dict[str, object] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, name = item.partition("=")
        key, name = key.strip().lower(), name.strip()
        if not sep or not key or not name:
            raise ConfigError(
                f"--columns: {item.strip()!r} is not KEY=NAME; "
                "write e.g. --columns 'ts=Date,close=Adj Close'"
            )
        if key in mapping:
            raise ConfigError(f"--columns: {key!r} is given twice")
        pair = tuple(part.strip() for part in name.split("+"))
        mapping[key] = pair if key == "ts" and len(pair) == 2 and all(pair) else name
    if not mapping:
        raise ConfigError("--columns: no KEY=NAME given; write e.g. --columns 'ts=Date'")
    return mapping


def _reader_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """--format, --tz, --columns, --time-format as load_bars/read_source keyword arguments."""
    kwargs: dict[str, object] = {
        name: getattr(args, name)
        for name in ("format", "tz", "time_format")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "columns", None) is not None:
        kwargs["columns"] = _parse_columns(args.columns)
    return kwargs


def _source_kwargs(args: argparse.Namespace) -> dict[str, object]:
    names = ("symbol", "timeframe", "side", "start", "end")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return {**kwargs, **_reader_kwargs(args)}


_T = TypeVar("_T")


def _read_noting(read: Callable[[], _T], notes: list[str]) -> _T:
    """``read()``, with the readers' SourceWarnings (an assumed time zone, no volume column)
    appended to ``notes`` for the report instead of printed as Python warnings."""
    import warnings

    from aiopt_lib.data.sources import SourceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read()
    for warning in caught:
        if issubclass(warning.category, SourceWarning):
            notes.append(" ".join(str(warning.message).split()))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return result


def _share_or_bars(text: str) -> int | float:
    """``0.2`` (a share) or ``1000`` (bars)."""
    try:
        return int(text) if text.strip().lstrip("+").isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share or a number of bars: {text!r}") from None


# search settings by their command-line option (the others come from --config files only)
_SEARCH_OPTIONS = {
    "n_trials": "--trials",
    "n_folds": "--folds",
    "walk_forward": "--walk-forward",
    "min_trades": "--min-trades",
    "pruner": "--pruner",
    "seed": "--seed",
    "study_name": "--study",
    "objective": "--objective",
    "holdout": "--holdout",
}


def _settings_problems(
    exc: ValidationError, config_file: str | None, from_flags: set[str] | frozenset[str]
) -> str:
    """pydantic's report as one line a CLI user can act on: each bad setting by its option
    (``from_flags``: the settings given as options; the others came from ``config_file``)."""
    problems = []
    for error, (location, message) in zip(exc.errors(), validation_problems(exc), strict=True):
        if message.startswith("Input should be"):  # pydantic's type errors: show the value
            message = f"{message[0].lower()}{message[1:]}, got {error['input']!r}"
        field = location.split(".")[0]
        if field in from_flags:
            where = _SEARCH_OPTIONS[field]
        else:
            where = f"{field} in {config_file}" if config_file else field or "search settings"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aiopt`` (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="aiopt",
        description="AI Indicator Optimizer: FX strategy research workbench.",
    )
    parser.add_argument("--version", action="version", version=f"aiopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect, validate and fetch market data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    info = data_commands.add_parser("info", help="what a data file holds")
    _source_options(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    validate = data_commands.add_parser(
        "validate",
        help="validation report; exit 0 when clean or only expected gaps, 1 when problems were found",
    )
    _source_options(validate)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.add_argument(
        "--max-items", type=int, default=30, help="items listed in the text report"
    )

    duka = data_commands.add_parser(
        "dukascopy", help="download Dukascopy data (or read the cache) into Parquet"
    )
    duka.add_argument("symbol", help="instrument, e.g. EURUSD")
    duka.add_argument("--start", required=True, help="start, inclusive (ISO date or time, UTC)")
    duka.add_argument("--end", required=True, help="end, exclusive (ISO date or time, UTC)")
    duka.add_argument("--timeframe", default="h1", choices=["tick", "m1", "h1", "d1"])
    duka.add_argument("--side", default="bid", choices=["bid", "ask", "both"])
    duka.add_argument("--cache", default=".cache/dukascopy", help="datafeed mirror folder")
    duka.add_argument("--out", required=True, help="Parquet file to write")
    duka.add_argument(
        "--offline", action="store_true", help="read the cache only; name the first missing file"
    )
    duka.add_argument("--workers", type=int, default=4, help="parallel downloads")
    duka.add_argument("--base-url", help="datafeed base URL (default: Dukascopy's)")
    duka.add_argument(
        "--point-value", type=int, help="price divisor for instruments not in the table"
    )
    duka.add_argument("--no-progress", action="store_true")

    aggregate = data_commands.add_parser(
        "aggregate", help="Dukascopy tick mirror -> 1-minute bars dataset (streaming, resumable)"
    )
    aggregate.add_argument(
        "mirror", help="Dukascopy datafeed mirror folder (SYMBOL/YYYY/MM/DD/HHh_ticks.bi5)"
    )
    aggregate.add_argument(
        "--out", required=True, help="bars dataset root (symbol=/year= Parquet parts)"
    )
    aggregate.add_argument("--symbol", help="instrument, when the mirror holds several")
    aggregate.add_argument("--start", help="first hour to read (inclusive; ISO, UTC)")
    aggregate.add_argument("--end", help="hour to stop at (exclusive; ISO, UTC)")
    aggregate.add_argument("--price", default="both", choices=["both", "bid", "ask", "mid"])
    aggregate.add_argument(
        "--point-value", type=int, help="price divisor for instruments not in the table"
    )
    aggregate.add_argument(
        "--batch-ticks",
        type=int,
        default=1_000_000,
        help="ticks aggregated at once (the memory bound)",
    )
    aggregate.add_argument("--overwrite", action="store_true", help="rebuild months already done")
    aggregate.add_argument("--no-progress", action="store_true")

    features = commands.add_parser(
        "features", help="write bars + all indicators (default parameters) + pattern flags"
    )
    _source_options(features)
    features.add_argument("--out", required=True, help="Parquet file to write")

    dataset = commands.add_parser("dataset", help="build the labelled sample dataset")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", required=True, metavar="SUBCOMMAND"
    )
    build = dataset_commands.add_parser("build", help="samples, features, labels -> Parquet")
    build.add_argument("--bars", required=True, help="bars source (file, folder or 'sample')")
    build.add_argument("--out", required=True, help="dataset folder to write")
    build.add_argument("--config", help="dataset configuration (YAML)")
    build.add_argument("--symbol", help="instrument (default: from the source, else EURUSD)")
    build.add_argument("--timeframe", help="resample the bars to this timeframe first")
    build.add_argument("--start", help="first time to keep (inclusive), ISO")
    build.add_argument("--end", help="time to stop at (exclusive), ISO")
    _reader_options(build, format_and_tz=True)

    images = dataset_commands.add_parser(
        "images", help="render every sample's chart image (resumable, idempotent)"
    )
    images.add_argument("--dataset", required=True, help="dataset folder (from dataset build)")
    images.add_argument(
        "--mode", choices=["folder", "column"], default="folder",
        help="PNG files keyed by sample id, or a binary image column in Parquet chunks",
    )  # fmt: skip
    images.add_argument("--style", choices=["candles", "jkx"], default="candles")
    images.add_argument("--width", type=int, help="image width in pixels (candles: 224)")
    images.add_argument("--height", type=int, help="image height in pixels (candles: 224)")
    images.add_argument("--no-volume", action="store_true", help="no volume pane")
    images.add_argument(
        "--overlays", default="", help="comma-separated indicator columns, e.g. ema_20,sma_50"
    )
    images.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    images.add_argument("--no-progress", action="store_true")

    search = commands.add_parser(
        "search", help="walk-forward Optuna search of a strategy template, ranked top 5"
    )
    search.add_argument(
        "--bars",
        default="sample",
        help="bars source: a file or folder (see data info), or 'sample'",
    )
    search.add_argument("--symbol", help="instrument of a Dukascopy folder")
    search.add_argument("--timeframe", help="resample the bars to this timeframe first")
    search.add_argument("--start", help="first time to keep (inclusive), ISO")
    search.add_argument("--end", help="time to stop at (exclusive), ISO")
    _reader_options(search, format_and_tz=True)
    search.add_argument(
        "--template",
        default="ema_cross",
        help=(
            "a built-in template (ema_cross, bollinger_reversion, pattern_rsi, ai_gate, "
            "cci_reversion, keltner_supertrend) or a YAML file"
        ),
    )
    search.add_argument("--out", required=True, help="folder for optuna.log, ranking.json, ...")
    search.add_argument("--config", help="search settings (YAML; keys of SearchConfig)")
    search.add_argument(
        "--storage",
        help="Optuna storage URL (default journal:///OUT/optuna.log; sqlite:///FILE.db, "
        "postgresql://USER@HOST/DB for several machines); the same URL continues the studies",
    )
    search.add_argument(
        "--workers", type=int, default=1, help="worker processes (or Ray tasks) on the studies"
    )
    search.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the workers as Ray tasks: on a Ray started here (no ADDRESS) or on the cluster "
        "at ADDRESS (auto, HOST:6379, ray://HOST:10001); share a PostgreSQL --storage",
    )
    search.add_argument("--trials", type=int, help="trials per walk-forward fold")
    search.add_argument("--folds", type=int, help="walk-forward folds")
    search.add_argument("--walk-forward", choices=["rolling", "anchored"])
    search.add_argument(
        "--objective", help="metric(s), comma-separated (two or more: NSGA-II), e.g. sharpe"
    )
    search.add_argument("--min-trades", type=int, help="training trades a trial needs")
    search.add_argument("--pruner", choices=["none", "median"], help="Optuna pruner (default none)")
    search.add_argument("--seed", type=int)
    search.add_argument(
        "--holdout",
        type=_share_or_bars,
        help="the lockbox: the last bars no study or ranking sees, a share (0.2, the default) "
        "or a number of bars (0: none)",
    )
    search.add_argument("--study", help="study name (default aiopt)")
    search.add_argument(
        "--predictions", help="Parquet file or stream folder of model predictions (AI gate)"
    )
    search.add_argument("--no-progress", action="store_true")

    pine = commands.add_parser("pine", help="export strategies to Pine Script, check Pine files")
    pine_commands = pine.add_subparsers(dest="pine_command", required=True, metavar="SUBCOMMAND")
    export = pine_commands.add_parser(
        "export", help="ranking.json -> one validated .pine per strategy"
    )
    export.add_argument("--ranking", required=True, help="a ranking.json from aiopt search")
    export.add_argument("--out", required=True, help="folder for <rank>_<name>.pine")
    export.add_argument("--version", type=int, choices=[5, 6], default=5, help="Pine version")
    check = pine_commands.add_parser("check", help="check a .pine file; exit 1 when it has errors")
    check.add_argument("file", help="a .pine file")
    check.add_argument("--version", type=int, choices=[5, 6], help="default: from //@version")
    check.add_argument("--fix", action="store_true", help="write the auto-corrected script back")

    batch = commands.add_parser(
        "batch", help="run a batch file's runs in parallel and write a comparison page"
    )
    batch.add_argument("file", help="batch file (YAML): base + grid or runs")
    batch.add_argument(
        "--workers", type=int, help="runs at the same time (default: the file's workers, else 1)"
    )
    batch.add_argument("--runs-dir", default="papermill_runs", help="where run folders go")
    batch.add_argument("--reports-dir", default="reports", help="where reports go")
    batch.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run each parameter set as a Ray task: on a Ray started here (no ADDRESS) or on the "
        "cluster at ADDRESS (auto, HOST:6379, ray://HOST:10001)",
    )
    batch.add_argument(
        "--ship",
        action="store_true",
        help="with --ray: each task works in its node's temporary folder and ships the run and "
        "report folders back (no shared storage needed)",
    )
    batch.add_argument(
        "--rerun", action="store_true", help="run every run again (default: skip finished runs)"
    )

    tune = commands.add_parser(
        "finetune",
        help="LoRA fine-tuning of the vision-language model, one process per GPU (DDP)",
    )
    tune.add_argument("config", help="fine-tuning job (YAML; see aiopt_lib.models.distributed)")
    tune.add_argument(
        "--nproc", type=int, default=1, help="processes, one per GPU (CPU: gloo processes)"
    )
    tune.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="run the model repository's own code (only for a model you trust)",
    )
    tune.add_argument("--timeout", type=float, help="stop the job after this many seconds")

    serve = commands.add_parser(
        "serve",
        help="serve saved signal models over HTTP (aiopt serve --help for the options)",
        add_help=False,
    )
    serve.add_argument("arguments", nargs=argparse.REMAINDER, help="see aiopt serve --help")

    live = commands.add_parser(
        "live", help="paper-trade a strategy in a live TradingNode (replay data, sandbox venue)"
    )
    live.add_argument(
        "--config",
        help="live configuration (YAML; AIOPT_LIVE__SECTION__KEY and AIOPT_* variables apply)",
    )

    run = commands.add_parser("run", help="run the notebooks of a configuration with papermill")
    run.add_argument(
        "--config", default="papermill_runs/default.yaml", help="run configuration (YAML)"
    )
    run.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (NOTEBOOK.KEY=VALUE for one notebook); repeatable",
    )
    run.add_argument(
        "--run-id",
        help="use this run id instead of time+hash; an existing id resumes the run: unchanged "
        "stages (same notebook, parameters and upstream stages) are skipped",
    )
    run.add_argument(
        "--force", action="store_true", help="rerun every stage, even the unchanged ones"
    )
    run.add_argument("--runs-dir", default="papermill_runs", help="where executed notebooks go")
    run.add_argument("--reports-dir", default="reports", help="where HTML reports go")
    run.add_argument("--show-code", action="store_true", help="show code cells in the HTML reports")
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    from aiopt_lib.data.explore import describe_bars
    from aiopt_lib.data.sources import load_bars_report

    warned: list[str] = []
    loaded = _read_noting(lambda: load_bars_report(args.source, **_source_kwargs(args)), warned)
    bars = loaded.bars
    summary = describe_bars(bars, symbol=args.symbol or "EURUSD").to_dicts()[0]
    notes = [*warned, *loaded.alerts()]
    if bars.height == 0 and loaded.raw_rows == 0:
        notes.append(
            "no bars: the source is empty (Dukascopy serves empty files for hours without ticks)"
        )
    elif bars.height == 0:
        notes.append(
            f"no bars: the source's {loaded.raw_rows} rows all lie outside --start/--end "
            "or were dropped by the cleaning"
        )
    info = {
        "source": loaded.source,
        "format": loaded.format,
        "rows_in_source": loaded.raw_rows,
        "columns": bars.columns,
        **{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in summary.items()},
        "cleaning": loaded.report.summary(),
        "notes": notes,
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key == "notes":
                for note in value:
                    print(f"{'note':<{width}}  {note}")
                continue
            if isinstance(value, float):
                value = f"{value:.6g}"
            print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from aiopt_lib.data.cleaning import validate_bars
    from aiopt_lib.data.sources import read_source

    kwargs = _source_kwargs(args)
    timeframe = kwargs.pop("timeframe", None)
    warned: list[str] = []
    raw = _read_noting(lambda: read_source(args.source, timeframe=timeframe, **kwargs), warned)
    notes = [*warned, *raw.notes]
    frame = raw.frame
    if raw.is_ticks:
        from aiopt_lib.data.resample import ticks_to_bars

        frame = ticks_to_bars(frame, timeframe or "1m", price=args.side or "bid")
    report = validate_bars(frame, source=raw.source, timeframe=timeframe, row_kind=raw.row_kind)
    if args.json:
        print(json.dumps({**report.to_dict(), "notes": notes}, indent=2, default=str))
    else:
        for note in notes:
            print(f"note: {note}")
        more = f"--max-items {report.issues.height} or --json lists them all"
        print(report.to_text(max_items=args.max_items, more=more))
    return EXIT_OK if report.is_clean else EXIT_PROBLEMS


def _cmd_dukascopy(args: argparse.Namespace) -> int:
    from aiopt_lib.core.atomic import write_parquet_atomic
    from aiopt_lib.data import dukascopy

    options: dict[str, object] = {}
    if args.base_url:
        options["base_url"] = args.base_url
    result = dukascopy.download(
        args.symbol,
        args.start,
        args.end,
        timeframe=args.timeframe,
        side=args.side,
        cache_dir=args.cache,
        offline=args.offline,
        workers=args.workers,
        progress=not args.no_progress,
        point_value=args.point_value,
        **options,
    )
    out = write_parquet_atomic(
        result.frame,
        args.out,
        metadata={
            "aiopt.source": "dukascopy",
            "aiopt.symbol": args.symbol.upper(),
            "aiopt.timeframe": args.timeframe,
            "aiopt.side": args.side,
        },
    )
    print(
        f"{result.frame.height} rows -> {out} "
        f"({result.files} files: {result.downloaded} downloaded, {result.from_cache} from cache, {result.empty} empty)"
    )
    return EXIT_OK


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from aiopt_lib.data.store import aggregate_ticks

    report = aggregate_ticks(
        args.mirror,
        args.out,
        args.symbol,
        start=args.start,
        end=args.end,
        price=args.price,
        point_value=args.point_value,
        overwrite=args.overwrite,
        batch_ticks=args.batch_ticks,
        progress=not args.no_progress,
    )
    print(
        f"{len(report.written)} month(s) written, {report.skipped} already done; "
        f"{report.ticks:,} ticks -> {report.bars:,} bars: {args.out}"
    )
    return EXIT_OK


def _cmd_features(args: argparse.Namespace) -> int:
    from aiopt_lib.core.atomic import write_parquet_atomic
    from aiopt_lib.data.sources import load_bars_report
    from aiopt_lib.features.dataset import indicator_and_pattern_frame

    loaded = load_bars_report(args.source, **_source_kwargs(args))
    frame = indicator_and_pattern_frame(loaded.bars)
    out = write_parquet_atomic(
        frame, args.out, metadata={"aiopt.source": loaded.source, "aiopt.kind": "features"}
    )
    print(f"{frame.height} bars x {frame.width} columns -> {out}")
    return EXIT_OK


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    from aiopt_lib.data.sources import load_bars_report
    from aiopt_lib.features.dataset import DatasetConfig, build_dataset, load_config_file

    options = {
        k: getattr(args, k) for k in ("symbol", "timeframe", "start", "end") if getattr(args, k)
    }
    options.update(_reader_kwargs(args))
    loaded = load_bars_report(args.bars, **options)
    config = DatasetConfig.from_mapping(load_config_file(args.config))
    symbol = (args.symbol or loaded.symbol or config.symbol).upper()
    built = build_dataset(loaded.bars, args.out, config, symbol=symbol, source=loaded.source)
    counts = built.manifest["counts"]
    dropped = ", ".join(f"{k} {v}" for k, v in counts.items() if k.startswith("dropped_") and v)
    print(
        f"{counts['samples']} samples from {counts['bars']} bars -> {built.path}"
        + (f" (dropped: {dropped})" if dropped else "")
    )
    print(
        "class balance: "
        + ", ".join(f"{k} {v}" for k, v in built.manifest["class_balance"].items())
    )
    return EXIT_OK


def _cmd_dataset_images(args: argparse.Namespace) -> int:
    from aiopt_lib.features.dataset import read_manifest, render_dataset_images
    from aiopt_lib.features.render import RenderSpec

    manifest = read_manifest(args.dataset)
    options: dict[str, object] = {"style": args.style, "volume": not args.no_volume}
    overlays = tuple(o.strip() for o in args.overlays.split(",") if o.strip())
    if overlays:
        options["overlays"] = overlays
    if args.style == "jkx":
        window = int(manifest["config"]["window"])
        options.update(width=args.width or 3 * window, height=args.height or 64)
    else:
        options.update(width=args.width or 224, height=args.height or 224)
    result = render_dataset_images(
        args.dataset,
        RenderSpec(**options),
        mode=args.mode,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        f"{result.rendered} images rendered, {result.skipped} already there, "
        f"{result.total} samples -> {result.location}"
    )
    return EXIT_OK


def _cmd_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    import polars as pl

    from aiopt_lib.data.sources import load_bars_report
    from aiopt_lib.strategy.ranking import verdict
    from aiopt_lib.strategy.search import (
        SearchConfig,
        builtin_template,
        load_template,
        save_ranking,
        write_search_outputs,
    )

    options = {
        k: getattr(args, k) for k in ("symbol", "timeframe", "start", "end") if getattr(args, k)
    }
    options.update(_reader_kwargs(args))
    bars = load_bars_report(args.bars, **options).bars
    template_path = Path(args.template)
    template = (
        load_template(template_path)
        if template_path.suffix in (".yaml", ".yml", ".json") or template_path.exists()
        else builtin_template(args.template)
    )
    settings: dict[str, object] = {}
    if args.config:
        settings.update(read_yaml_mapping(args.config, "search settings file"))
    flags = {
        "n_trials": args.trials,
        "n_folds": args.folds,
        "walk_forward": args.walk_forward,
        "min_trades": args.min_trades,
        "pruner": args.pruner,
        "seed": args.seed,
        "study_name": args.study,
        "objective": args.objective.split(",") if args.objective else None,
        "holdout": args.holdout,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    settings.update(given)
    try:
        config = SearchConfig.model_validate(settings)
    except ValidationError as exc:
        raise AioptError(_settings_problems(exc, args.config, set(given))) from None
    predictions = None
    if args.predictions:
        from aiopt_lib.core.streams import read_stream

        source = Path(args.predictions)
        # a run folder's predictions stream (``<dir>/predictions/``) or one Parquet file
        if source.is_dir():
            predictions = read_stream(source.parent, source.name)
        else:
            predictions = pl.read_parquet(source)
    from aiopt_lib.strategy.search import run_search

    out = Path(args.out)
    result = run_search(
        bars,
        template,
        config,
        storage=args.storage,
        run_dir=out,
        predictions=predictions,
        workers=args.workers,
        progress=not args.no_progress,
        ray_address=args.ray,
    )
    ranking = save_ranking(result, out / "ranking.json")
    write_search_outputs(result, out)
    print(f"{result.n_trials} completed trials in {len(result.folds)} folds ({result.storage})")
    for sentence in verdict(json.loads(ranking.read_text())).values():
        print(sentence)
    print("ranked on post-training data (the figures that chose them):")
    for entry in result.top:
        oos = entry.out_of_sample
        print(
            f"  #{entry.rank} {json.dumps(entry.spec.params)}: Sharpe "
            f"{oos['sharpe']:.2f}, return {oos['total_return']:+.2%}, trades {oos['trades']:.0f}, "
            f"DSR {entry.deflated_sharpe:.2f}"
        )
    print(f"ranking: {ranking}")
    return EXIT_OK


def _cmd_pine_export(args: argparse.Namespace) -> int:
    from aiopt_lib.pine.export import export_ranking

    files = export_ranking(args.ranking, args.out, version=args.version)
    for file in files:
        print(file.path if file.path else f"#{file.rank} {file.name}: not exported: {file.error}")
    return EXIT_OK if all(f.path for f in files) else EXIT_PROBLEMS


def _cmd_pine_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aiopt_lib.core.atomic import write_text_atomic
    from aiopt_lib.pine.export import check_pine, fix_pine

    path = Path(args.file)
    if path.is_dir():
        raise AioptError(f"{path}: is a directory; give a .pine file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AioptError(
            f"{path}: not a Pine Script text file (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} is not UTF-8)"
        ) from None
    if args.fix:
        text, fixes = fix_pine(text, args.version)
        for fix in fixes:
            print(f"{path}: fixed: {fix}")
        if fixes:
            write_text_atomic(path, text)
    issues = check_pine(text, args.version)
    for issue in issues:
        print(f"{path}:{issue.line}:{issue.column}: {issue.severity}: {issue.message}")
    errors = [i for i in issues if i.severity == "error"]
    if not issues:
        print(f"{path}: ok")
    return EXIT_PROBLEMS if errors else EXIT_OK


def _cmd_batch(args: argparse.Namespace) -> int:
    from aiopt_lib.runs.batch import run_batch

    result = run_batch(
        args.file,
        workers=args.workers,
        runs_dir=args.runs_dir,
        reports_dir=args.reports_dir,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        ray_address=args.ray,
        ship=args.ship,
        rerun=args.rerun,
    )
    for run in result.failed:
        print(f"run {run.run_id} failed: {run.error}", file=sys.stderr)
    print(f"report: {result.index}")
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def _cmd_finetune(args: argparse.Namespace) -> int:
    from aiopt_lib.models.distributed import finetune_summary, launch_finetune

    try:
        result = launch_finetune(
            args.config,
            nproc=args.nproc,
            trust_remote_code=args.trust_remote_code,
            timeout=args.timeout,
        )
    except (RuntimeError, TimeoutError) as exc:  # a process failed: its own output says why
        print(f"aiopt: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(json.dumps(finetune_summary(result)))
    return EXIT_OK


def _cmd_live(args: argparse.Namespace) -> int:
    from aiopt_lib.live.node import main_live

    return main_live(args.config)


def _cmd_run(args: argparse.Namespace) -> int:
    from aiopt_lib.runs.runner import load_run_config, run_pipeline

    config = load_run_config(args.config, args.parameter)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run_pipeline(
        config,
        runs_dir=args.runs_dir,
        reports_dir=args.reports_dir,
        run_id=args.run_id,
        show_code=True if args.show_code else None,
        force=args.force,
        log=log,
    )
    print(f"run {result.run_id}: executed notebooks in {result.run_dir}")
    for step in result.steps:
        print(f"  {step.report}")
    print(f"report: {result.index}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aiopt`` console script; returns the exit code."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        # the server parses its own options (aiopt_lib.serve.server), errors included
        from aiopt_lib.serve.server import main_serve

        return main_serve(arguments[1:], prog="aiopt serve")
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in arguments
    args = parser.parse_args([a for a in arguments if a != "--debug"])
    args.debug = debug
    handlers = {
        "info": _cmd_info,
        "validate": _cmd_validate,
        "dukascopy": _cmd_dukascopy,
        "aggregate": _cmd_aggregate,
    }
    if args.command == "data":
        handler = handlers[args.data_command]
    elif args.command == "features":
        handler = _cmd_features
    elif args.command == "search":
        handler = _cmd_search
    elif args.command == "batch":
        handler = _cmd_batch
    elif args.command == "live":
        handler = _cmd_live
    elif args.command == "finetune":
        handler = _cmd_finetune
    elif args.command == "pine":
        handler = _cmd_pine_export if args.pine_command == "export" else _cmd_pine_check
    elif args.command == "dataset":
        handler = _cmd_dataset_build if args.dataset_command == "build" else _cmd_dataset_images
    else:
        handler = _cmd_run
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        # a search stopped on Ctrl-C says what it kept; anything else was simply cut short
        kept = f": {exc}" if str(exc) else ""
        print(f"aiopt: interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        print(f"aiopt: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: Exception) -> str:
    """The error as one line: ours as written, the OS's naming the file, anything else with its
    type and a pointer to --debug (an unexpected error is a bug worth a traceback)."""
    if isinstance(exc, ValidationError):
        message = "; ".join(
            f"{where or 'value'}: {problem}" for where, problem in validation_problems(exc)
        )
    elif isinstance(exc, FileNotFoundError) and exc.filename:
        message = f"{exc.filename}: file not found"
    elif isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, AioptError | ValueError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
