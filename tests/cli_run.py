"""Run the `vtw` command line in-process, as the tests see it: exit code, stdout and stderr."""

from __future__ import annotations

from vtwcli.cli import main


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """vtwcli.cli.main(args) -> (exit code, stdout, stderr) of this command alone (earlier captured output, e.g.
    save_pretrained's progress, is dropped first)."""
    capsys.readouterr()
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
