"""The `vtw` command line: thin typer commands, no logic.

Each command parses options, calls one library function and renders its result (rich table or
``--json``). Errors raised as :class:`vtwcli.errors.VtwError` become one line on stderr and an exit
code; anything else is a bug and shows its traceback only with ``--debug``.
"""

from __future__ import annotations

import sys

import typer

from vtwcli import __version__
from vtwcli.cli import _state
from vtwcli.errors import VtwError

app = typer.Typer(
    name="vtw",
    help="Visual Tokens Withdrawal for multimodal LLMs: calibrate the withdrawal layer, profile what it "
    "saves, and gate CI on the saved YAML profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vtw {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state.debug = debug


# Registration order is the order `vtw --help` lists the commands in.
from vtwcli.cli import commands  # noqa: E402,F401  (registers the subcommands on `app`)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, exit codes 0 / 1 (check failed) / 2 (bad input)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, prog_name="vtw")
    except VtwError as error:
        if debug:
            raise
        _state.err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _state.err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
