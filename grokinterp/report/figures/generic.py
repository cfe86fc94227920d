"""A figure for an analysis without a dedicated one: its scalar series over training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from grokinterp.config import GrokinterpError
from grokinterp.report.figures._results import as_array
from grokinterp.report.figures._style import white_template

__all__ = ["series_figure"]


def series_figure(steps: Any, series: Mapping[str, Any], title: str = "") -> go.Figure:
    """One line per named series (``{name: [n]}``) against ``steps`` (``[n]``)."""
    if not series:
        raise GrokinterpError("series must hold at least one named series")
    x = as_array(steps, float)
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Scatter(x=x, y=as_array(values, float), mode="lines", name=name))
    fig.update_layout(title=title, xaxis={"title": "step"}, **white_template(), height=360)
    return fig
