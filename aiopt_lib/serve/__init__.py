"""Model serving: saved signal models behind HTTP (``POST /predict``, ``GET /models``,
``GET /health``), on LitServe with dynamic batching and several models chosen per request.

Start a server with ``python -m aiopt_lib.serve MODEL_DIR [ID=MODEL_DIR ...] [--port N]`` or
:func:`aiopt_lib.serve.server.main_serve`. The pieces: :mod:`~aiopt_lib.serve.schemas` (the wire
format), :mod:`~aiopt_lib.serve.catalog` (what each model reads; the per-worker model cache),
:mod:`~aiopt_lib.serve.inputs` (request items made into model inputs the way training made them),
:mod:`~aiopt_lib.serve.engine` (batched predictions and reasons) and
:mod:`~aiopt_lib.serve.server` (the HTTP server and its command line).

Importing this package imports nothing heavy: the server (LitServe, FastAPI, torch) loads on
first use of :func:`main_serve` / :func:`serve`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main_serve", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aiopt_lib.serve import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
