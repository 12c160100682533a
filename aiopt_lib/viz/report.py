"""Conventions every HTML report shares: the answer under the question, and frames without raw
polars decorations.

Each notebook opens with its **question**; :func:`answer` shows the one-sentence answer computed
from the run (a ``<div class="aiopt-answer">`` the browser tests look for), so a reader who stops
after the first screen still leaves with the result. :func:`configure_report_display` is the
safety net for frames a notebook shows without :func:`aiopt_lib.viz.tables.table`: no
``shape: (…)`` line, no dtype row, every row (no ``…``), full strings.
"""

from __future__ import annotations

from html import escape

import polars as pl
from IPython.display import HTML

from aiopt_lib.data.cleaning import ValidationReport
from aiopt_lib.viz.tables import table

__all__ = ["ANSWER_CLASS", "answer", "configure_report_display", "validation_view"]

ANSWER_CLASS = "aiopt-answer"
"""The CSS class of an answer block (tests/browser_check.py counts them)."""

_STYLE = (
    "border-left:4px solid #1f77b4;background:#f3f8fc;padding:.6em 1em;margin:.6em 0 1em 0;"
    "font-size:1.05em;line-height:1.45"
)


def answer(*sentences: str, label: str = "Answer") -> HTML:
    """The page's answer as a highlighted block: ``label`` in bold, then the sentences (each its
    own paragraph; plain text, escaped). Computed by the caller from the run, never fixed text."""
    shown = [s.strip() for s in sentences if s and s.strip()]
    if not shown:
        raise ValueError("an answer needs at least one sentence")
    body = "".join(
        f"<p style='margin:.2em 0'>{'<b>' + escape(label) + ':</b> ' if i == 0 else ''}"
        f"{escape(text)}</p>"
        for i, text in enumerate(shown)
    )
    return HTML(f'<div class="{ANSWER_CLASS}" style="{_STYLE}">{body}</div>')


def configure_report_display(max_rows: int = 100) -> None:
    """Polars frames displayed as-is show every row up to ``max_rows`` (no ``…``), whole
    strings, and neither the ``shape: (…)`` line nor the dtype row."""
    pl.Config.set_tbl_hide_dataframe_shape(True)
    pl.Config.set_tbl_hide_column_data_types(True)
    pl.Config.set_tbl_rows(max_rows)
    pl.Config.set_fmt_str_lengths(200)


def validation_view(report: ValidationReport, *, max_items: int = 20) -> HTML:
    """A validation report in the reports' table style: its headline, the items counted by kind,
    severity and action, then the first ``max_items`` items (problems first)."""
    issues = report.issues
    parts = [f"<p><b>{escape(report.headline())}</b></p>"]
    if issues.is_empty():
        return HTML("".join([*parts, "<p>No issues.</p>"]))
    counts = (
        issues.group_by(["kind", "severity", "action"])
        .agg(pl.len().alias("items"))
        .sort(["kind", "severity", "action"])
    )
    rank = {"error": 0, "warning": 1, "info": 2}
    first = (
        issues.with_columns(pl.col("severity").replace_strict(rank, default=3).alias("_rank"))
        .sort(["_rank", "row"], nulls_last=True)
        .drop("_rank")
        .head(max_items)
    )
    parts.append(table(counts, title="Items by kind").as_raw_html())
    parts.append(
        table(
            first, title=f"First {first.height} of {issues.height} item(s), problems first"
        ).as_raw_html()
    )
    return HTML("".join(parts))
