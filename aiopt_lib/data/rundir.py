"""A run folder as the notebooks share it: what one notebook leaves there, the next one loads.

Notebook 01 writes the cleaned bars (``bars.parquet``), 02 the dataset (``dataset/``), 03 the
predictions stream (``streams/predictions/``), 04 the ranking (``ranking.json``) and 05 the Pine
files (``strategies/``). Every later notebook falls back to the configured source when an earlier
one did not run, so that a notebook can be run alone. :class:`RunDir` is that convention in one
place, instead of a preamble that each notebook writes (and words) a little differently.

It lives in ``data`` because it needs nothing above it: the bars come from
:func:`~aiopt_lib.data.sources.load_bars`, the streams from :mod:`aiopt_lib.core.streams`. What
later stages make of the folder (building the dataset, reading the ranking) stays with those
stages; :class:`RunDir` only names where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from aiopt_lib.core.streams import Streams, read_stream
from aiopt_lib.data.sources import load_bars

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    """The folder of one run (``path``), with the ``source`` (and ``symbol``) its bars come from
    when notebook 01 has not written them there.

    The notebooks build one from their ``run_dir`` / ``source`` parameters::

        run = ai.RunDir(run_dir, source=source, symbol=symbol).mkdir()
        bars, predictions = run.bars(), run.predictions()

    The loaders read the folder on every call (nothing is cached): a notebook that writes into
    the folder and reads it back sees what it wrote.
    """

    path: Path
    source: Any = "sample"
    symbol: str | None = None

    def __post_init__(self) -> None:
        # a notebook parameter is a string; compare and hash by the Path
        object.__setattr__(self, "path", Path(self.path))

    # -----------------------------------------------------------------------------------------
    # Where things are

    @property
    def run_id(self) -> str:
        """The run's id: the folder's name (what ``aiopt run --run-id`` named it)."""
        return self.path.resolve().name

    @property
    def bars_file(self) -> Path:
        """``bars.parquet``: the cleaned bars notebook 01 writes."""
        return self.path / "bars.parquet"

    @property
    def dataset_dir(self) -> Path:
        """``dataset/``: the labelled samples and their images (notebook 02)."""
        return self.path / "dataset"

    @property
    def streams_dir(self) -> Path:
        """``streams/``: the logging streams (:class:`~aiopt_lib.core.streams.Streams`)."""
        return self.path / "streams"

    @property
    def ranking_file(self) -> Path:
        """``ranking.json``: the top strategies of the search (notebook 04)."""
        return self.path / "ranking.json"

    @property
    def strategies_dir(self) -> Path:
        """``strategies/``: the exported Pine files and their ``parity.json`` (notebooks 04, 05)."""
        return self.path / "strategies"

    @property
    def bars_origin(self) -> Any:
        """Where :meth:`bars` reads from: ``bars_file`` when it exists, else ``source`` (for a
        notebook to say which it used)."""
        return self.bars_file if self.bars_file.is_file() else self.source

    # -----------------------------------------------------------------------------------------
    # Loading

    def mkdir(self) -> RunDir:
        """Create the folder (and its parents) if needed; returns ``self`` to chain."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def bars(self) -> pl.DataFrame:
        """The run's bars: ``bars.parquet`` when notebook 01 wrote it, else the ``source``.

        Both go through :func:`~aiopt_lib.data.sources.load_bars`, so bars read back from the
        folder are validated as the source's are (for the cleaned bars that costs milliseconds
        and changes nothing); every notebook then works on the same frame, whichever path it
        took.
        """
        return load_bars(self.bars_origin, symbol=self.symbol)

    def predictions(self) -> pl.DataFrame | None:
        """The predictions stream of the run (notebook 03's test-period predictions), or None
        when there is none.

        A stream that exists but holds no rows (notebook 03 stopped before its flush) is None too:
        the notebooks treat both the same (the AI gate is not confirmed, nothing is distilled),
        and an empty frame would only fail later (a quantile of no values).
        """
        if not (self.streams_dir / "predictions").is_dir():
            return None
        frame = read_stream(self.streams_dir, "predictions")
        return frame if frame.height else None

    def streams(self, **writer_options: Any) -> Streams:
        """The run's :class:`~aiopt_lib.core.streams.Streams`, with ``run_id`` the folder's name
        (``writer_options`` go to each stream writer)."""
        return Streams(self.path, run_id=self.run_id, **writer_options)
