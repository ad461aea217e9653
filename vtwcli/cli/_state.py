"""Process-wide CLI state: consoles and the --debug flag."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
debug = False
