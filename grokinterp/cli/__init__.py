"""The ``grokinterp`` command line (Typer): one sub-module per group of commands, registered on
one :data:`app`. Every command mirrors a function of :mod:`grokinterp.api`.
"""

from grokinterp.cli import experiments, runs  # noqa: F401  (register their commands on app)
from grokinterp.cli.app import app, console, err_console, friendly, main
from grokinterp.cli.runs import runs_table

__all__ = ["app", "console", "err_console", "friendly", "main", "runs_table"]
