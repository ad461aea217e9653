"""Subcommand registry: each command lives in its own module and registers itself on `app`.

The import order is the order `vtw --help` lists them: the main job first, CI gates next, listings last.
"""

from vtwcli.cli import calibrate_cmd  # noqa: F401
from vtwcli.cli import profile_cmd  # noqa: F401
from vtwcli.cli import verify_cmd  # noqa: F401
from vtwcli.cli import gates_cmd  # noqa: F401  (compare, check)
from vtwcli.cli import eval_cmd  # noqa: F401
from vtwcli.cli import datasets_cmd  # noqa: F401
from vtwcli.cli import models_cmd  # noqa: F401
