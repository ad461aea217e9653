"""The `vtw` command line: thin typer commands, no logic.

Each command parses options, calls one library function and renders its result (rich table or
``--json``). Errors raised as :class:`vtwcli.errors.VtwError` become one line on stderr and an exit
code; anything else is a bug and shows its traceback only with ``--debug``.
"""

from __future__ import annotations

import sys

from vtwcli.cli._signals import stop_while_starting

with stop_while_starting():  # Ctrl-C while the CLI imports: the interrupt's one line, not an import traceback
    import typer
    from rich.markup import escape

    from vtwcli import __version__
    from vtwcli.cli import _state
    from vtwcli.errors import VtwError, is_out_of_memory

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
with stop_while_starting():
    from vtwcli.cli import commands  # noqa: E402,F401  (registers the subcommands on `app`)


_OOM_HINT = ("lower --batch-size, use a smaller --dtype (bfloat16 or float16 on GPU) or spread the model with "
             "--device-map auto")


def _fail(message: str, code: int) -> None:
    _state.err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _debug_first(argv: list[str]) -> tuple[list[str], bool]:
    """`--debug` is a root option; accept it after the subcommand too (`vtw check p.yaml --debug`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    if not debug:
        return argv, False
    return ["--debug"] + [a for a in argv[:end] if a != "--debug"] + argv[end:], True


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, exit codes 0 / 1 (check failed) / 2 (bad input)."""
    from vtwcli.cli._signals import interrupted_message, stop_on_signals

    argv, debug = _debug_first(list(argv if argv is not None else sys.argv[1:]))
    try:
        with stop_on_signals():  # SIGTERM stops any phase (model loading too) like Ctrl-C, with a message
            code = app(args=argv, prog_name="vtw", standalone_mode=False)
        if code == 130:  # typer turns a KeyboardInterrupt it sees into a silent exit code 130
            raise KeyboardInterrupt
    except VtwError as error:
        if debug:
            raise
        _fail(str(error), error.exit_code)
    except typer.TyperException as error:  # click's usage errors: bad option value, unknown option, missing argument
        if debug:
            raise
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `vtw`: typer already printed the help
            sys.exit(error.exit_code)
        ctx = getattr(error, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        _fail(" ".join(error.format_message().split()).rstrip(".") + hint, error.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        if debug:
            raise
        _fail(interrupted_message(), 130)
    except Exception as error:
        if debug or not is_out_of_memory(error):
            raise
        detail = str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__
        _fail(f"out of memory ({detail}); {_OOM_HINT}", 2)
    sys.exit(code if isinstance(code, int) else 0)
