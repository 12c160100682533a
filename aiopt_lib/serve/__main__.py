"""``python -m aiopt_lib.serve MODEL_DIR [ID=MODEL_DIR ...] [--port N] ...``: see
:func:`aiopt_lib.serve.server.main_serve`."""

from __future__ import annotations

if __name__ == "__main__":
    from aiopt_lib.serve.server import main_serve

    raise SystemExit(main_serve())
