"""What checks and gates return: :class:`CheckResult`, and the figures' text."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckResult", "passed", "failed", "not_applicable", "num", "EPS"]

EPS = 1e-9  # slack of the <= comparisons against a limit


@dataclass(frozen=True)
class CheckResult:
    """One check or gate: ``passed`` False = failed; ``skipped`` True = not applicable (counts as passed)."""

    name: str
    passed: bool
    detail: str
    source: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "n/a" if self.skipped else ("pass" if self.passed else "FAIL")

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "passed": self.passed, "detail": self.detail}


def passed(name, detail, source=""):
    return CheckResult(name, True, detail, source)


def failed(name, detail, source=""):
    return CheckResult(name, False, detail, source)


def not_applicable(name, detail, source=""):
    return CheckResult(name, True, detail, source, skipped=True)


def num(value) -> str:
    """A figure in a detail line: ``null``, 6 significant digits for floats, else as is."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
