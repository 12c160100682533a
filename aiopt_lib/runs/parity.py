"""Cross-engine parity: our engine's trades against another engine's, as one table row.

Notebook 05 confirms every strategy in a second engine (nautilus_trader, and its Pine export run
offline in PyneCore) and shows the outcome as a table: trades on each side, how many agree, the
first that does not. Each engine has its own comparison with its own tolerances
(:func:`aiopt_lib.execution.nautilus.first_difference`: bar, side, exit reason, prices to the
tick, PnL to the cent; :func:`aiopt_lib.pine.offline.compare_trades`: paired by entry bar, the
trade still open at the end left out as TradingView keeps it open); :func:`engine_parity` calls
the right one and gives both answers one shape, so the notebook writes the table once.

It lives in ``runs`` because it compares ``execution`` with ``pine`` results: those two are
siblings of one layer and may not import each other, so only the layer above may use both. The
Nautilus engine's module is imported when a comparison asks for it: comparing Pine trades does
not load nautilus_trader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.pine.offline import compare_trades

__all__ = ["EngineParity", "engine_parity", "parity_table"]

Engine = Literal["nautilus", "pine"]
_ENGINES: tuple[str, ...] = ("nautilus", "pine")

# the columns EngineParity.row adds, in table order (the label columns come first)
_PARITY_COLUMNS: dict[str, pl.DataType] = {
    "trades ours": pl.Int64(),
    **{f"trades {engine}": pl.Int64() for engine in _ENGINES},
    "equal trades": pl.Int64(),
    "first difference": pl.Int64(),
    "parity": pl.String(),
}


@dataclass(frozen=True)
class EngineParity:
    """Our trades against ``engine``'s (:func:`engine_parity`).

    ``trades_ours`` / ``trades_theirs`` the trades compared on each side (for Pine without our
    trade still open at the end of the data), ``equal`` how many agree and ``first_difference``
    the index of the first that does not (None: all agree). Nautilus' comparison is by position,
    so ``equal`` stops at the first difference; Pine's pairs trades by entry bar, so trades after
    a difference can still count.
    """

    engine: str
    trades_ours: int
    trades_theirs: int
    equal: int
    first_difference: int | None

    @property
    def identical(self) -> bool:
        """Every trade on both sides agreed."""
        return self.first_difference is None

    @property
    def status(self) -> str:
        """``"equal"`` or ``"first difference at trade <i>"``."""
        if self.first_difference is None:
            return "equal"
        return f"first difference at trade {self.first_difference}"

    @property
    def summary(self) -> str:
        """One line for a table or a report: ``"<equal>/<ours> trades <status>"``."""
        return f"{self.equal}/{self.trades_ours} trades {self.status}"

    def row(self, *, summary: bool = False, **labels: Any) -> dict[str, Any]:
        """A table row: the ``labels`` (rank, strategy, file...), then ``trades ours``,
        ``trades <engine>``, ``equal trades``, ``first difference`` and, with ``summary``, the
        :attr:`summary` as ``parity`` (the column the run's index shows for Pine files)."""
        row = {
            **labels,
            "trades ours": self.trades_ours,
            f"trades {self.engine}": self.trades_theirs,
            "equal trades": self.equal,
            "first difference": self.first_difference,
        }
        if summary:
            row["parity"] = self.summary
        return row


def engine_parity(
    ours: pl.DataFrame, theirs: pl.DataFrame, *, engine: Engine, tick: float
) -> EngineParity:
    """Compare our engine's trades (``ours``) with ``engine``'s (``theirs``), prices to half a
    ``tick`` (the spec's ``instrument_tick_size``).

    ``engine="nautilus"``: :func:`~aiopt_lib.execution.nautilus.first_difference` (trades in
    order; entry and exit bar, side and exit reason equal, PnL to the cent, as Nautilus rounds
    each commission). ``engine="pine"``: :func:`~aiopt_lib.pine.offline.compare_trades` (paired
    by entry bar; our trade closed by the end of the data left out; exit reasons not compared,
    TradingView names its exits differently).
    """
    if engine == "nautilus":
        # in-function on purpose: execution.nautilus imports nautilus_trader (~1.3 s)
        from aiopt_lib.execution.nautilus import first_difference

        diff = first_difference(ours, theirs, tick=tick)
        return EngineParity(
            engine=engine,
            trades_ours=ours.height,
            trades_theirs=theirs.height,
            equal=min(ours.height, theirs.height) if diff is None else diff,
            first_difference=diff,
        )
    if engine == "pine":
        report = compare_trades(ours, theirs, tick)
        return EngineParity(
            engine=engine,
            trades_ours=report.total_ours,
            trades_theirs=report.total_theirs,
            equal=report.equal,
            first_difference=None if report.identical else report.equal_prefix,
        )
    raise ConfigError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}")


def parity_table(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """The rows of :meth:`EngineParity.row` (and rows of labels only, e.g. a strategy that could
    not be exported, with a ``parity`` note) as one frame.

    Columns: every label column in the order first seen, then the parity columns present, in
    :meth:`EngineParity.row`'s order; counts are integers, a value a row lacks is null (so a
    frame of rows with and without counts still has integer columns).
    """
    rows = list(rows)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    columns = [c for c in seen if c not in _PARITY_COLUMNS]
    columns += [c for c in _PARITY_COLUMNS if c in seen]
    schema = {c: _PARITY_COLUMNS[c] for c in columns if c in _PARITY_COLUMNS}
    data = {c: [row.get(c) for row in rows] for c in columns}
    return pl.DataFrame(data, schema_overrides=schema, strict=False)
