"""The Typer application, its console and the one-line error handling every command shares.

Usage errors (bad config values, unknown names, a missing or corrupt run, a bad path) print one
line and exit with code 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from grokinterp.config import (
    GrokinterpError,
    RunConfig,
    apply_overrides,
    load_config,
    load_preset,
    preset_names,
)

app = typer.Typer(
    help=(
        "grokinterp: train small models with dense checkpoints and watch how the generalising "
        "circuit of grokking forms (Fourier structure, tickets, rank, local complexity, norms)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full Python tracebacks on errors."),
) -> None:
    _state["debug"] = debug


def friendly(fn):
    """Turn GrokinterpError — and an operating-system error on a path the user gave (too long,
    not a directory, no permission, disk full) — into a one-line message and exit code 2
    (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (GrokinterpError, OSError) as e:
            if _state["debug"]:
                raise
            if isinstance(e, OSError) and not isinstance(e, GrokinterpError):
                where = f": {e.filename}" if e.filename else ""
                e = GrokinterpError(f"{e.strerror or type(e).__name__}{where}")
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def resolve_config(
    preset: str | None, config: Path | None, overrides: list[str] | None
) -> RunConfig:
    """The RunConfig from exactly one of --preset / --config, with --set overrides applied."""
    if (preset is None) == (config is None):
        raise GrokinterpError(
            f"give exactly one of --preset NAME or --config FILE (presets: {', '.join(preset_names())})"
        )
    cfg = load_preset(preset) if preset is not None else load_config(config)
    return apply_overrides(cfg, overrides or [])


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
