"""The model server: saved signal models behind ``POST /predict``, on LitServe.

Public API (what ``aiopt serve`` and ``python -m aiopt_lib.serve`` call)::

    main_serve(argv: Sequence[str] | None = None, *, prog: str = "python -m aiopt_lib.serve") -> int
        # argv: the command line after the program name (None: sys.argv[1:]), i.e.
        #   MODEL_DIR|ID=MODEL_DIR [...] [--host 127.0.0.1] [--port 8000] [--max-batch 16]
        #   [--batch-timeout 0.001] [--workers 1] [--cache-size 4] [--window N]
        #   [--device auto|cpu|cuda] [--log-level warning] [--fast-queue]
        # Returns the exit status: 0 after a clean stop (Ctrl+C, SIGTERM), 2 for bad arguments
        # or a folder that cannot be served (one line on stderr, no traceback).

    serve(models: Sequence[str], *, host="127.0.0.1", port=8000, max_batch=16,
          batch_timeout=0.001, workers=1, cache_size=4, window=None, device="auto",
          log_level="warning", fast_queue=False) -> int
        # the same without parsing; raises ConfigError/DataError (AioptError) for what
        # main_serve turns into exit status 2.

Endpoints:

* ``POST /predict``: one item, a list of items or ``{"items": [...], "model": ..., "explain":
  ...}`` (:mod:`aiopt_lib.serve.schemas`). One item is answered by one
  :class:`~aiopt_lib.serve.schemas.Prediction` (``model``, ``version``, ``label``,
  ``confidence``, ``probabilities`` by label of :data:`aiopt_lib.features.labels.CLASSES`),
  several by ``{"predictions": [...]}`` in their order.
* ``GET /models``: the served models, what each reads and how many workers hold it loaded.
* ``GET /health``: 200 ``ok`` once every worker has loaded its default model, else 503.

Every error is a JSON :class:`~aiopt_lib.serve.schemas.ErrorBody` ``{"error", "field",
"status"}``: 400 malformed JSON, 404 unknown model (or path), 413 a body over 64 MiB, 422 an
item its model cannot read (wrong feature names, wrong image size, "too few bars" for the
indicators' warm-up...), 503 a model that cannot be loaded any more, 504 a request that waited
longer than 30 s; a bug is a one-line 500, never a traceback (that goes to the server's log).

Processes (LitServe): the command's process loads every model once (:func:`open_models`: a bad
folder fails before anything listens) and starts ``workers`` inference workers per device
(CUDA devices when ``torch.cuda`` sees any, else the CPU, whose cores the workers share) and as
many HTTP processes. HTTP processes check a request against the schema and queue it; a worker
collects up to ``max_batch`` requests, waiting at most ``batch_timeout`` seconds for the batch to
fill (dynamic batching), computes each item's inputs, runs one ``predict_proba`` per model in the
batch (:func:`~aiopt_lib.serve.engine.predict_items`) and answers each request. Each worker holds
at most ``cache_size`` models, least recently used dropped first
(:class:`~aiopt_lib.serve.catalog.ModelCache`), so any number of models can be served by id.
"""

# No `from __future__ import annotations` here: LitServe hands the annotations of
# decode_request/encode_response to FastAPI, which needs the classes themselves.

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from queue import Empty
from typing import Any

import litserve as ls
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.serve.catalog import ModelCache, ServedModel, open_models
from aiopt_lib.serve.engine import GroupFailure, predict_items
from aiopt_lib.serve.inputs import ItemError, PreparedItem, prepare_item
from aiopt_lib.serve.schemas import ErrorBody, ModelInfo, PredictRequest

__all__ = ["SignalAPI", "WaitingBatchedLoop", "build_server", "main_serve", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 16
DEFAULT_BATCH_TIMEOUT = 0.001
"""Seconds a worker waits for a batch to fill: the latency a lone request pays for batching."""
DEFAULT_CACHE_SIZE = 4
MAX_PAYLOAD_BYTES = 64 << 20
REQUEST_TIMEOUT_S = 30.0
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
PROG = "python -m aiopt_lib.serve"

log = logging.getLogger(__name__)


# -- what travels from decode_request to encode_response, inside one worker ----------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """A request whose items are ready for their models."""

    items: list[PreparedItem]
    single: bool


@dataclasses.dataclass(frozen=True)
class _Refused:
    """A request answered by an error (the other requests of its batch go on)."""

    status: int
    message: str
    field: str | None = None


def error_response(status: int, message: str, field: str | None = None) -> Response:
    """The JSON :class:`ErrorBody` answer every error gets."""
    body = ErrorBody(error=" ".join(str(message).split()), field=field, status=status)
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


def _json_response(body: Any) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), allow_nan=False).encode(),
        media_type="application/json",
    )


def _warm_up_item(entry: ServedModel) -> PreparedItem:
    """A neutral item for ``entry`` (features at their baseline, a blank chart): run once per
    worker at start, so the first request does not pay for lazy initialisation."""
    features = np.full(len(entry.feature_names), np.nan) if entry.feature_names else None
    image = None
    if entry.spec is not None:
        image = np.full((entry.spec.height, entry.spec.width, 3), 255, dtype=np.uint8)
    return PreparedItem(model_id=entry.id, features=features, image=image, explain=False)


class WaitingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, but an idle worker blocks on its queue and a lone request
    does not wait.

    LitServe's own loop asks the (inter-process) queue for a request every millisecond while
    idle, a fifth of a core per worker doing nothing, and makes every request wait
    ``batch_timeout`` for company. This one blocks until a request comes, then takes every
    request already queued (up to ``max_batch``). It waits up to ``batch_timeout`` (from the
    first request's arrival) for more only while traffic is concurrent, i.e. when the previous
    batch held more than one request: one client asking in turn pays no batching delay, many
    clients get full batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_size = 0

    def get_batch_requests(
        self, lit_api: ls.LitAPI, request_queue: Any, transport: Any
    ) -> tuple[list[Any], list[Any]]:
        try:
            requests = [request_queue.get(timeout=1.0)]
        except Empty:
            return [], []
        deadline = time.monotonic() + (lit_api.batch_timeout if self._last_size > 1 else 0.0)
        while len(requests) < lit_api.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                requests.append(
                    request_queue.get(timeout=remaining)
                    if remaining > 0
                    else request_queue.get_nowait()
                )
            except Empty:
                break
        self._last_size = len(requests)
        timeout = lit_api.request_timeout
        payloads, timed_out = [], []
        for request in requests:
            if request == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = request
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            if timeout not in (None, -1, False) and time.monotonic() - timestamp > timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class SignalAPI(ls.LitAPI):
    """The LitServe API of ``POST /predict`` (module docstring).

    Everything that can be wrong with one request is found in :meth:`decode_request` and
    carried to :meth:`encode_response` as a value, never raised: LitServe fails a whole batch
    when a hook raises, and one bad request must not cost the others of its batch their
    answers. ``loaded``: a shared array, per model (in ``entries`` order), of the workers that
    hold it (``GET /models``).
    """

    def __init__(
        self,
        entries: Sequence[ServedModel],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_timeout: float = DEFAULT_BATCH_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        threads: int | None = None,
        loaded: Any = None,
    ) -> None:
        super().__init__(
            max_batch_size=max_batch,
            batch_timeout=batch_timeout,
            api_path="/predict",
            loop=WaitingBatchedLoop() if max_batch > 1 else "auto",
        )
        self.entries = {entry.id: entry for entry in entries}
        self.default_id = entries[0].id
        self.cache_size = cache_size
        self.threads = threads
        self.loaded = loaded
        self.cache: ModelCache | None = None

    def _count(self, model_id: str, loaded: bool) -> None:
        if self.loaded is None:
            return
        index = list(self.entries).index(model_id)
        with self.loaded.get_lock():
            self.loaded[index] += 1 if loaded else -1

    def setup(self, device: str) -> None:
        """Per worker: its model cache on ``device``, the default model loaded and run once."""
        self.cache = ModelCache(
            self.entries,
            self.cache_size,
            device=str(device),
            threads=self.threads,
            on_change=self._count,
        )
        self.cache.get(self.default_id)
        predict_items([_warm_up_item(self.entries[self.default_id])], self.cache)

    def decode_request(self, request: PredictRequest) -> _Job | _Refused:
        """The request's items as their models' inputs, or why they cannot be (the first
        problem, with the field it is about: ``items[2].features``)."""
        prepared: list[PreparedItem] = []
        for number, item in enumerate(request.items):
            where = "" if request.single else f"items[{number}]."
            model_id = item.model or request.model or self.default_id
            entry = self.entries.get(model_id)
            if entry is None:
                return _Refused(
                    404,
                    f"unknown model {model_id!r}; served: {', '.join(self.entries)} (GET /models)",
                    f"{where}model",
                )
            explain = request.explain if item.explain is None else item.explain
            try:
                prepared.append(prepare_item(entry, item, explain=explain))
            except ItemError as exc:
                return _Refused(exc.status, exc.message, where + (exc.field or "item"))
            except AioptError as exc:
                return _Refused(422, str(exc), where.rstrip(".") or None)
            except Exception as exc:  # a bug: one line to the client, the traceback to the log
                log.exception("item %d of a request could not be prepared", number)
                return _Refused(500, f"the item could not be read: {type(exc).__name__}: {exc}")
        return _Job(prepared, request.single)

    def predict(self, x: Any) -> Any:
        """The answer body (or refusal) of each request: a batch's items of all requests go
        through :func:`predict_items` together (one ``predict_proba`` per model)."""
        assert self.cache is not None, "setup() was not run"
        jobs = x if isinstance(x, list) else [x]
        flat = [item for job in jobs if isinstance(job, _Job) for item in job.items]
        results = predict_items(flat, self.cache) if flat else []
        out: list[Any] = []
        start = 0
        for job in jobs:
            if isinstance(job, _Refused):
                out.append(job)
                continue
            mine = results[start : start + len(job.items)]
            start += len(job.items)
            failed = next((r for r in mine if isinstance(r, GroupFailure)), None)
            if failed is not None:
                out.append(_Refused(failed.status, failed.message, None))
            elif job.single:
                out.append(mine[0])
            else:
                out.append({"predictions": mine})
        return out if isinstance(x, list) else out[0]

    def encode_response(self, output: Any) -> Response:
        """200 with the answer, or the refusal's JSON error."""
        if isinstance(output, _Refused):
            return error_response(output.status, output.message, output.field)
        return _json_response(output)


# -- the HTTP side ---------------------------------------------------------------------------


def _field(loc: Sequence[Any]) -> str | None:
    """``("body", "items", 0, "features", "rsi_14")`` as ``items[0].features.rsi_14``."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or None


def _validation_response(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    kind, loc = first.get("type"), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error") or first.get("msg", "")
        return error_response(400, f"malformed JSON: {detail}")
    if kind == "missing" and loc in ((), ("body",)):
        return error_response(
            400, 'empty body: send a JSON item, a list of items or {"items": [...]}'
        )
    if loc in ((), ("body",)):
        return error_response(
            422, 'a request is an item object, a list of items or {"items": [...]}'
        )
    message = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    field = _field(loc)
    return error_response(422, f"{field + ': ' if field else ''}{message}{more}", field)


def _install_routes(app: FastAPI, entries: Sequence[ServedModel], loaded: Any) -> None:
    """``GET /models`` and the JSON error handlers on LitServe's FastAPI app."""

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint {request.url.path} (POST /predict, GET /models, /health)"
        return error_response(exc.status_code, message)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)

    async def models() -> Response:
        counts = list(loaded) if loaded is not None else [0] * len(entries)
        infos = [
            ModelInfo(
                id=entry.id,
                kind=entry.kind,
                version=entry.version,
                path=str(entry.path),
                default=index == 0,
                loaded=int(counts[index]),
                inputs=list(entry.inputs),
                feature_names=list(entry.feature_names),
                image_size=None if entry.image_size is None else list(entry.image_size),
                window=entry.window,
            ).model_dump()
            for index, entry in enumerate(entries)
        ]
        return _json_response({"default": entries[0].id, "models": infos})

    app.add_api_route("/models", models, methods=["GET"])


def _accelerator(device: str) -> tuple[str, int]:
    """LitServe's accelerator and device count: CUDA when torch sees it (LitServe's own "auto"
    asks nvidia-smi, which a CPU build of torch cannot use)."""
    if device == "cpu":
        return "cpu", 1
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    if device == "cuda":
        raise ConfigError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    return "cpu", 1


def build_server(
    entries: Sequence[ServedModel],
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_timeout: float = DEFAULT_BATCH_TIMEOUT,
    workers: int = 1,
    cache_size: int = DEFAULT_CACHE_SIZE,
    device: str = "auto",
    fast_queue: bool = False,
) -> ls.LitServer:
    """The LitServer of ``entries`` (not started: call ``.run(host=..., port=...)``). CPU workers
    share the cores this process may use, ``cores // workers`` torch threads each."""
    accelerator, devices = _accelerator(device)
    threads = None
    if accelerator == "cpu":
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
    loaded = mp.get_context("spawn").Array("i", len(entries))
    api = SignalAPI(
        entries,
        max_batch=max_batch,
        batch_timeout=batch_timeout,
        cache_size=cache_size,
        threads=threads,
        loaded=loaded,
    )
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers,
        timeout=REQUEST_TIMEOUT_S,
        max_payload_size=MAX_PAYLOAD_BYTES,
        model_metadata={"models": [entry.id for entry in entries]},
        # ZeroMQ between the HTTP process and the workers instead of multiprocessing queues
        fast_queue=fast_queue,
    )
    server.uvicorn_graceful_timeout = 5
    _install_routes(server.app, entries, loaded)
    return server


def _check_options(
    host: str, port: int, max_batch: int, batch_timeout: float, workers: int, cache_size: int
) -> None:
    if host not in HOSTS:
        raise ConfigError(f"--host must be one of {', '.join(HOSTS)}, got {host!r}")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--port must be in 1024..65535, got {port}")
    if max_batch < 1 or workers < 1 or cache_size < 1:
        raise ConfigError("--max-batch, --workers and --cache-size must be at least 1")
    if not 0 < batch_timeout <= 10:
        # 0 would make a worker poll its queue without pause
        raise ConfigError(f"--batch-timeout must be in (0, 10] seconds, got {batch_timeout}")


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


_OWNER_PID: int | None = None


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM: a clean stop of the command's process (LitServe's Ctrl+C path). The HTTP
    processes are forked with this handler; there SIGTERM does what it would without it."""
    if os.getpid() == _OWNER_PID:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def serve(
    models: Sequence[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_timeout: float = DEFAULT_BATCH_TIMEOUT,
    workers: int = 1,
    cache_size: int = DEFAULT_CACHE_SIZE,
    window: int | None = None,
    device: str = "auto",
    log_level: str = "warning",
    fast_queue: bool = False,
) -> int:
    """Serve the model folders ``models`` (``DIR`` or ``ID=DIR``; the first is the default)
    until Ctrl+C or SIGTERM; returns 0 then. Everything that can be checked is checked before
    the server starts (options, folders, the port), as a :class:`ConfigError` /
    ``DataError``. ``window``: bars a chart drawn from bars shows (default: ``model.json``'s,
    else 64)."""
    _check_options(host, port, max_batch, batch_timeout, workers, cache_size)
    if window is not None and window < 1:
        raise ConfigError(f"--window must be at least 1, got {window}")
    entries = open_models(models, window=window)
    _check_port(host, port)
    server = build_server(
        entries,
        max_batch=max_batch,
        batch_timeout=batch_timeout,
        workers=workers,
        cache_size=min(cache_size, len(entries)),
        device=device,
        fast_queue=fast_queue,
    )
    where = "cpu" if server.devices == ["cpu"] else ", ".join(d[0] for d in server.devices)
    print(
        f"serving {', '.join(e.id for e in entries)} on http://{host}:{port} ({where}, "
        f"{workers} worker(s) per device, batches of up to {max_batch} within "
        f"{batch_timeout * 1e3:g} ms)",
        file=sys.stderr,
        flush=True,
    )
    global _OWNER_PID
    _OWNER_PID = os.getpid()
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(host=host, port=port, log_level=log_level, generate_client_file=False)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage block
        raise _UsageError(message)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Serve saved signal models over HTTP: POST /predict, GET /models, GET /health.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_DIR",
        help="a saved model folder, or ID=DIR to name it (default id: the folder's name); "
        "the first is the default model",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"one of {', '.join(HOSTS)}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="requests per batch, at most"
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=DEFAULT_BATCH_TIMEOUT,
        metavar="S",
        help="seconds a worker waits for a batch to fill",
    )
    parser.add_argument("--workers", type=int, default=1, help="inference workers per device")
    parser.add_argument(
        "--cache-size",
        type=int,
        default=DEFAULT_CACHE_SIZE,
        help="models a worker holds loaded (least recently used dropped first)",
    )
    parser.add_argument(
        "--window", type=int, default=None, help="bars a chart drawn from bars shows"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="warning"
    )
    parser.add_argument(
        "--fast-queue",
        action="store_true",
        help="ZeroMQ between the HTTP process and the workers (more req/s under many clients, "
        "more latency for one on 2 cores: benchmarks/bench_serve.py)",
    )
    return parser


def main_serve(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Parse ``argv`` (module docstring) and :func:`serve`; the exit status. Bad arguments and
    folders that cannot be served are one line on stderr and status 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser(prog).parse_args(args_list)
    except _UsageError as exc:
        print(f"{prog}: {exc} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return serve(
            args.models,
            host=args.host,
            port=args.port,
            max_batch=args.max_batch,
            batch_timeout=args.batch_timeout,
            workers=args.workers,
            cache_size=args.cache_size,
            window=args.window,
            device=args.device,
            log_level=args.log_level,
            fast_queue=args.fast_queue,
        )
    except AioptError as exc:
        print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
