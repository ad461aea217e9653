"""Consistency checks of one profile (`vtw check`) and CI gates between two (`vtw compare`).

Everything here reads typed profiles and returns result objects; the CLI only renders them and turns
failures into exit codes (0 all passed, 1 a check / gate failed, 2 unreadable or invalid input, raised
as VtwError by the reader). :mod:`~vtwcli.gates.check` holds the checks, :mod:`~vtwcli.gates.compare`
the gates, :mod:`~vtwcli.gates.metrics` the one table of figures both read.
"""

from vtwcli.gates.check import (REL_TOL_FLOPS, REL_TOL_LATENCY, FileCheck, check_failure_message, check_files,
                                check_profile, check_profile_dict, check_typed_profile)
from vtwcli.gates.compare import Comparison, GateLimits, compare_files, compare_profiles
from vtwcli.gates.metrics import METRICS, MetricRow, MetricSpec, format_delta, format_value
from vtwcli.gates.results import CheckResult

__all__ = ["CheckResult", "FileCheck", "GateLimits", "MetricRow", "MetricSpec", "METRICS", "Comparison",
           "check_profile_dict", "check_typed_profile", "check_profile", "check_files", "check_failure_message",
           "compare_profiles", "compare_files", "format_value", "format_delta", "REL_TOL_FLOPS",
           "REL_TOL_LATENCY"]
