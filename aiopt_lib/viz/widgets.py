"""An ipywidgets panel for sweeping a strategy's parameters by hand in JupyterLab.

::

    panel = strategy_panel(bars, builtin_template("ema_cross"))
    panel                      # sliders, a metrics table, a status line, price + equity chart
    panel.set(fast=5, slow=60) # several controls, one backtest

Each change rebuilds the :class:`~aiopt_lib.strategy.spec.StrategySpec`, checks the template's
constraints, runs the vectorised backtest on one :class:`~aiopt_lib.strategy.spec.SignalContext` (so
an ``ema(20)`` is computed once however often the sliders move) and redraws. A violated
constraint or an invalid spec shows its message in the status line and leaves the last good
result on screen. The chart (:func:`backtest_chart`) is built from at most ``max_points`` rows
so the browser stays responsive on long histories.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from html import escape
from typing import Any

import altair as alt
import ipywidgets as widgets
import numpy as np
import polars as pl

from aiopt_lib.core.errors import AioptError, ConfigError
from aiopt_lib.strategy.backtest import BacktestResult
from aiopt_lib.strategy.rules import SignalContext
from aiopt_lib.strategy.search import ParamRange, SearchTemplate
from aiopt_lib.strategy.spec import StrategySpec, backtest
from aiopt_lib.viz.charts import inline_data

DEFAULT_MAX_POINTS = 5_000
DIRECTIONS: tuple[str, ...] = ("long", "short", "both")
# (metric key, label, format): the figures the panel's table shows, in this order.
PANEL_METRICS: tuple[tuple[str, str, str], ...] = (
    ("total_return", "Total return", "percent"),
    ("sharpe", "Sharpe", "ratio"),
    ("sortino", "Sortino", "ratio"),
    ("max_drawdown", "Max drawdown", "percent"),
    ("profit_factor", "Profit factor", "ratio"),
    ("win_rate", "Win rate", "percent"),
    ("trades", "Trades", "count"),
    ("exposure", "Exposure", "percent"),
)
# Trade markers may take at most this share of the point budget; the rest draws the price line.
_MARKER_SHARE = 0.8
_EVENT_COLOURS = {
    "long entry": "#1a9850",
    "short entry": "#d73027",
    "long exit": "#1a9850",
    "short exit": "#d73027",
}
_EVENT_SHAPES = {
    "long entry": "triangle-up",
    "short entry": "triangle-down",
    "long exit": "cross",
    "short exit": "cross",
}


# ---------------------------------------------------------------------------------------------
# Chart


def chart_rows(
    bars: pl.DataFrame, result: BacktestResult, *, max_points: int = DEFAULT_MAX_POINTS
) -> tuple[pl.DataFrame, int]:
    """The rows :func:`backtest_chart` draws: at most ``max_points``, and the number of trades
    that got markers.

    Columns ``ts``, ``close``, ``equity`` (the bar's close and the equity at it), ``event``
    (``"long entry"``, ``"short exit"``... or null for a plain bar) and ``marker_price`` (the fill)
    and ``pnl`` (exits). Every bar in which a trade filled is kept (one row per fill, so the line
    passes through it); the other bars are thinned to every ``k``-th (plus the last) to fit the
    budget. Only when the fills alone would take more than 80% of the budget are the trades
    thinned too (evenly over time), and the count of those kept is returned.
    """
    if max_points < 10:
        raise ConfigError(f"max_points must be >= 10, got {max_points}")
    n = bars.height
    trades = result.trades
    n_trades = trades.height
    marker_budget = int(max_points * _MARKER_SHARE) // 2
    if n_trades > marker_budget:
        keep = np.unique(np.linspace(0, n_trades - 1, marker_budget).round().astype(np.int64))
        trades = trades[keep]
    events = pl.concat(
        [
            trades.select(
                pl.col("entry_ts").alias("ts"),
                (pl.col("side") + " entry").alias("event"),
                pl.col("entry_price").alias("marker_price"),
                pl.lit(None, pl.Float64).alias("pnl"),
            ),
            trades.select(
                pl.col("exit_ts").alias("ts"),
                (pl.col("side") + " exit").alias("event"),
                pl.col("exit_price").alias("marker_price"),
                pl.col("pnl"),
            ),
        ]
    )
    series = pl.DataFrame(
        {
            "ts": bars.get_column("ts"),
            "close": bars.get_column("close"),
            "equity": result.equity.get_column("equity"),
        }
    )
    remaining = max_points - events.height
    # Every k-th bar gives ceil(n / k) rows, the last bar one more: together <= remaining.
    step = 1 if n + events.height <= max_points else math.ceil(n / max(remaining - 1, 1))
    index = pl.int_range(pl.len())
    plain = (
        series.filter((index % step == 0) | (index == n - 1))
        .join(events.select("ts").unique(), on="ts", how="anti", maintain_order="left")
        .with_columns(
            pl.lit(None, pl.String).alias("event"),
            pl.lit(None, pl.Float64).alias("marker_price"),
            pl.lit(None, pl.Float64).alias("pnl"),
        )
    )
    marked = events.join(series, on="ts", how="left").select(plain.columns)
    rows = pl.concat([plain, marked]).sort("ts", maintain_order=True)
    return rows, trades.height


def backtest_chart(
    bars: pl.DataFrame,
    result: BacktestResult,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str | None = None,
    width: int = 900,
    height: int = 300,
    equity_height: int = 140,
) -> alt.VConcatChart:
    """Close price with trade entry/exit markers above the equity curve (Altair, shared time axis:
    drag on the price panel to zoom both, double-click to reset).

    ``bars`` are the bars ``result`` was computed on (same rows as ``result.equity``). The chart
    holds at most ``max_points`` data rows (:func:`chart_rows`): long histories are thinned, the
    bars with fills always kept. Entries are triangles (up long, down short), exits crosses.
    """
    rows, shown = chart_rows(bars, result, max_points=max_points)
    n_trades = result.trades.height
    heading = title or "Price, trades and equity"
    if shown < n_trades:
        heading += f" (markers for {shown:,} of {n_trades:,} trades)"
    # One zoom on the price panel; the equity panel follows through the shared x scale.
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    x = alt.X("ts:T", title=None)
    line = (
        alt.Chart()
        .mark_line(strokeWidth=1, color="#1f4e79")
        .encode(
            x=x,
            y=alt.Y("close:Q", scale=alt.Scale(zero=False), title="close"),
            tooltip=[
                alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("close:Q", format=".5f"),
            ],
        )
    )
    markers = (
        alt.Chart()
        .transform_filter("isValid(datum.event)")
        .mark_point(size=60, filled=True, opacity=0.9)
        .encode(
            x=x,
            y=alt.Y("marker_price:Q"),
            color=alt.Color(
                "event:N",
                scale=alt.Scale(domain=list(_EVENT_COLOURS), range=list(_EVENT_COLOURS.values())),
                title="fill",
            ),
            shape=alt.Shape(
                "event:N",
                scale=alt.Scale(domain=list(_EVENT_SHAPES), range=list(_EVENT_SHAPES.values())),
                title="fill",
            ),
            tooltip=[
                alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"),
                "event:N",
                alt.Tooltip("marker_price:Q", format=".5f", title="fill price"),
                alt.Tooltip("pnl:Q", format=",.2f"),
            ],
        )
    )
    price = (
        alt.layer(line, markers)
        .add_params(zoom)
        .properties(width=width, height=height, title=heading)
    )
    equity = (
        alt.Chart()
        .mark_line(strokeWidth=1, color="#6a3d9a")
        .encode(
            x=x,
            y=alt.Y("equity:Q", scale=alt.Scale(zero=False), title="equity"),
            tooltip=[
                alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("equity:Q", format=",.2f"),
            ],
        )
        .properties(width=width, height=equity_height)
    )
    return alt.vconcat(price, equity, data=inline_data(rows)).resolve_scale(x="shared")


def chart_data_rows(chart: alt.TopLevelMixin) -> int:
    """How many data rows a chart's spec carries (inline values and named datasets together)."""
    spec = chart.to_dict(validate=False)
    count = sum(len(values) for values in spec.get("datasets", {}).values())

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            own = len(node["values"]) if isinstance(node.get("values"), list) else 0
            return own + sum(walk(v) for k, v in node.items() if k not in ("values", "datasets"))
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return 0

    return count + walk(spec)


# ---------------------------------------------------------------------------------------------
# Metrics table


def _format_metric(value: float, kind: str) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if kind == "percent":
        return f"{value:.2%}"
    if kind == "count":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def metrics_table_html(metrics: Mapping[str, float]) -> str:
    """An HTML table of the panel's metrics (:data:`PANEL_METRICS`), formatted for reading; each
    value cell also carries the exact number in ``data-value`` (``repr`` of the float)."""
    cells = []
    for key, label, kind in PANEL_METRICS:
        value = float(metrics[key])
        cells.append(
            f'<tr><th style="text-align:left;padding:1px 10px 1px 0">{escape(label)}</th>'
            f'<td style="text-align:right" data-metric="{key}" data-value="{value!r}">'
            f"{escape(_format_metric(value, kind))}</td></tr>"
        )
    return '<table class="aiopt-metrics">' + "".join(cells) + "</table>"


# ---------------------------------------------------------------------------------------------
# Controls


def default_space(spec: StrategySpec) -> dict[str, ParamRange]:
    """Slider ranges for every param of ``spec`` when no search space is given: whole numbers
    ``v >= 1`` go from 1 to ``max(4 v, 10)``, other numbers from ``v / 4`` to ``4 v`` (mirrored
    for negatives; 0 gives 0..10 or 0..1)."""
    space = {}
    for name, value in spec.params.items():
        is_int = isinstance(value, int)
        if value == 0:
            low, high = 0, (10 if is_int else 1.0)
        elif is_int:
            low, high = (1, max(4 * value, 10)) if value > 0 else (min(4 * value, -10), -1)
        else:
            low, high = sorted((value / 4.0, value * 4.0))
        space[name] = ParamRange(low=low, high=high)
    return space


def _decimals(step: float) -> int:
    return max(2, math.ceil(-math.log10(step))) if step > 0 else 2


def _control(name: str, param_range: ParamRange, value: float) -> widgets.Widget:
    """The widget for one param, starting at ``value`` (a range is widened to hold it)."""
    style = {"description_width": "90px"}
    layout = widgets.Layout(width="380px")
    if param_range.choices is not None:
        choices = list(param_range.choices)
        if value not in choices:
            choices.append(value)
        return widgets.Dropdown(
            options=[(str(c), c) for c in choices],
            value=value,
            description=name,
            style=style,
            layout=layout,
        )
    low = min(float(param_range.low), float(value))  # type: ignore[arg-type]
    high = max(float(param_range.high), float(value))  # type: ignore[arg-type]
    common = {"description": name, "continuous_update": False, "style": style, "layout": layout}
    if param_range.is_int:
        return widgets.IntSlider(
            value=int(value), min=int(low), max=int(high), step=int(param_range.step or 1), **common
        )
    if param_range.log:
        step = 0.01
        return widgets.FloatLogSlider(
            value=float(value),
            base=10,
            min=math.log10(low),
            max=math.log10(high),
            step=step,
            readout_format=".3g",
            **common,
        )
    step = float(param_range.step) if param_range.step else (high - low) / 100.0
    step = step if step > 0 else 1.0
    return widgets.FloatSlider(
        value=float(value),
        min=low,
        max=high,
        step=step,
        readout_format=f".{_decimals(step)}f",
        **common,
    )


def _coerce(control: widgets.Widget, name: str, value: Any) -> Any:
    """``value`` as ``control`` holds it; out-of-range values are an error, not clamped."""
    if isinstance(control, widgets.Dropdown):
        allowed = [o[1] if isinstance(o, tuple) else o for o in control.options]
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {allowed}")
        return value
    if isinstance(control, widgets.IntSlider):
        if isinstance(value, bool) or not float(value).is_integer():
            raise ConfigError(f"{name}: needs a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if isinstance(control, widgets.FloatLogSlider):
        low, high = control.base**control.min, control.base**control.max
    else:
        low, high = control.min, control.max
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value!r} is outside the slider's range {low}..{high}")
    return value


# ---------------------------------------------------------------------------------------------
# The panel


class StrategyPanel:
    """Sliders for a spec's params, the backtest they give, redrawn on every change.

    Attributes: ``widget`` (the box to display; the panel itself displays as it), ``controls``
    (param name or ``"direction"`` -> widget), ``spec`` and ``result`` (the last spec that ran and
    its :class:`~aiopt_lib.strategy.backtest.BacktestResult`; ``result`` is None until one ran), ``chart``
    (the last Altair chart), ``metrics_html`` and ``status`` (the table's HTML and the status
    text), ``runs`` (backtests run so far), ``context`` (the shared
    :class:`~aiopt_lib.strategy.spec.SignalContext`). Build it with :func:`strategy_panel`.
    """

    def __init__(
        self,
        context: SignalContext,
        template: SearchTemplate,
        spec: StrategySpec,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
    ) -> None:
        self.context = context
        self.template = template
        self.base_spec = spec
        self.max_points = max_points
        self.spec: StrategySpec = spec
        self.result: BacktestResult | None = None
        self.chart: alt.VConcatChart | None = None
        self.runs = 0
        self._holding = 0
        self._status_text = ""
        self.controls: dict[str, widgets.Widget] = {
            name: _control(name, param_range, spec.params[name])
            for name, param_range in template.space.items()
        }
        self.controls["direction"] = widgets.Dropdown(
            options=list(DIRECTIONS),
            value=spec.direction,
            description="direction",
            style={"description_width": "90px"},
            layout=widgets.Layout(width="380px"),
        )
        self.metrics_widget = widgets.HTML(layout=widgets.Layout(margin="0 0 0 24px"))
        self.status_widget = widgets.HTML()
        self.chart_output = widgets.Output()
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.VBox(list(self.controls.values())),
                        self.metrics_widget,
                    ]
                ),
                self.status_widget,
                self.chart_output,
            ]
        )
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.refresh()

    # -- reading the state --------------------------------------------------------------------

    @property
    def metrics_html(self) -> str:
        """The metrics table as HTML (:func:`metrics_table_html`); empty before the first run."""
        return self.metrics_widget.value

    @property
    def status(self) -> str:
        """The status line as plain text: what ran, or why nothing ran."""
        return self._status_text

    def values(self) -> dict[str, Any]:
        """The controls' current values (params and ``direction``)."""
        return {name: control.value for name, control in self.controls.items()}

    # -- changing it ----------------------------------------------------------------------------

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Within the block, control changes do not re-run; one run follows at the end."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding:
            self.refresh()

    def set(self, **values: Any) -> None:
        """Set several controls (param names and/or ``direction``) and re-run once.

        Unknown names and values outside a slider's range raise :class:`ConfigError` before
        anything changes (a slider would otherwise clamp silently).
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ConfigError(
                f"unknown control(s) {unknown}; the panel has {sorted(self.controls)}"
            )
        coerced = {
            name: _coerce(self.controls[name], name, value) for name, value in values.items()
        }
        with self.hold():
            for name, value in coerced.items():
                self.controls[name].value = value

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        if not self._holding:
            self.refresh()

    def refresh(self) -> None:
        """Rebuild the spec from the controls; if it is valid and feasible, backtest and redraw,
        else show why in the status line and keep the previous result and chart."""
        values = self.values()
        direction = values.pop("direction")
        try:
            spec = (
                self.base_spec.with_params(**values)
                .model_copy(update={"direction": direction})
                .revalidated()
            )
        except (AioptError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            self._show_status(f"invalid spec: {exc}", ok=False)
            return
        violated = self.violated_constraints(spec.params)
        if violated:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            self._show_status(
                f"constraint violated: {'; '.join(violated)} ({shown}); showing the last valid run",
                ok=False,
            )
            return
        started = time.perf_counter()
        try:
            result = backtest(self.context, spec)
        except (AioptError, ValueError) as exc:
            self._show_status(f"backtest failed: {exc}", ok=False)
            return
        elapsed = time.perf_counter() - started
        self.runs += 1
        self.spec, self.result = spec, result
        self.chart = backtest_chart(
            self.context.bars,
            result,
            max_points=self.max_points,
            title=f"{spec.name} ({direction})",
        )
        self.metrics_widget.value = metrics_table_html(result.metrics)
        self._render_chart(self.chart)
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
        self._show_status(
            f"run {self.runs}: {result.trades.height:,} trades, {params}, direction {direction} "
            f"(backtest {elapsed * 1000:.0f} ms)",
            ok=True,
        )

    def violated_constraints(self, params: Mapping[str, float]) -> list[str]:
        """The template's constraints that ``params`` break (empty: feasible)."""
        if self.template.feasible(params):
            return []
        return [
            text
            for text in self.template.constraints
            if not self.template.model_copy(update={"constraints": [text]}).feasible(params)
        ]

    # -- output ---------------------------------------------------------------------------------

    def _show_status(self, text: str, *, ok: bool) -> None:
        self._status_text = text
        colour = "#1b5e20" if ok else "#b71c1c"
        self.status_widget.value = f'<span style="color:{colour}">{escape(text)}</span>'

    def _render_chart(self, chart: alt.TopLevelMixin) -> None:
        # Replace the Output's content directly (instead of ``with output: display(...)``): works
        # with and without a kernel, and the old chart is swapped out in one message.
        bundle = chart._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        self.chart_output.outputs = (
            {"output_type": "display_data", "data": data, "metadata": metadata or {}},
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def strategy_panel(
    bars: pl.DataFrame,
    template: SearchTemplate | StrategySpec,
    *,
    space: Mapping[str, ParamRange] | None = None,
    predictions: pl.DataFrame | None = None,
    spec: StrategySpec | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> StrategyPanel:
    """An interactive panel (ipywidgets) sweeping the params of a strategy on ``bars``.

    One control per param of the search space (``IntSlider`` for whole-number ranges,
    ``FloatSlider`` with the range's step or (high − low) / 100, ``FloatLogSlider`` for log
    ranges, ``Dropdown`` for choices; sliders update on release) and a ``direction`` dropdown.
    ``template`` is a :class:`~aiopt_lib.strategy.search.SearchTemplate` (its space and constraints) or a
    bare :class:`~aiopt_lib.strategy.spec.StrategySpec` (ranges from :func:`default_space`, no
    constraints); ``space`` replaces the ranges. ``spec`` (e.g. a ranked strategy's) gives the
    rules and the starting values instead of the template's spec. ``predictions`` feed the
    ``ai_*`` gates. The backtest runs once now and again on every change; display the returned
    :class:`StrategyPanel`. ``max_points`` bounds the chart's data rows.
    """
    if isinstance(template, StrategySpec):
        base = spec or template
        template = SearchTemplate(spec=template, space=dict(space or default_space(base)))
    elif space is not None:
        template = SearchTemplate(
            spec=template.spec, space=dict(space), constraints=template.constraints
        )
    base = spec or template.spec
    missing = sorted(set(template.space) - set(base.params))
    if missing:
        raise ConfigError(f"the spec has no params {missing} of the search space")
    return StrategyPanel(SignalContext(bars, predictions), template, base, max_points=max_points)


__all__ = [
    "DEFAULT_MAX_POINTS",
    "PANEL_METRICS",
    "StrategyPanel",
    "backtest_chart",
    "chart_data_rows",
    "chart_rows",
    "default_space",
    "metrics_table_html",
    "strategy_panel",
]
