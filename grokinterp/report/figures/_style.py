"""The report's plotly template, set at no cost while a report is rendered (issue 16).

Setting a template by name (``fig.update_layout(template="plotly_white")``) deep-copies and
re-validates the whole template: ≈ 25 ms a figure on a 2-core machine, a tenth of a report. A
figure created while the template is plotly's *default* gets it at creation, unvalidated and
uncopied. So :func:`report_template` makes ``plotly_white`` the default for the duration of a
report, and the figure functions ask :func:`white_template` for their ``update_layout`` keyword:
nothing inside a report, ``template="plotly_white"`` when they are called on their own (a
notebook), so that a figure looks the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import plotly.io as pio

TEMPLATE = "plotly_white"

__all__ = ["TEMPLATE", "report_template", "white_template"]


def white_template() -> dict[str, str]:
    """``update_layout`` keywords that give a figure the report's template (see the module)."""
    return {} if pio.templates.default == TEMPLATE else {"template": TEMPLATE}


@contextlib.contextmanager
def report_template() -> Iterator[None]:
    """Inside the block, new figures get :data:`TEMPLATE` as plotly's default (restored after)."""
    previous = pio.templates.default
    pio.templates.default = TEMPLATE
    try:
        yield
    finally:
        pio.templates.default = previous
