"""Rows of the results table, their targets, and the printed table."""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One figure of Weft against its reference(s). ``ratio`` is Weft over the first
    reference; ``check`` decides the target from (weft, ratio) when there is one."""

    scenario: str
    metric: str
    weft: float | None
    refs: list[tuple[str, float | None]] = field(default_factory=list)
    target: str = ""
    check: Callable[[float | None, float | None], bool] | None = None
    digits: int = 1
    compare: bool = True  # False: the references are context, a ratio means nothing
    met: bool | None = None
    ratio: float | None = None

    def evaluate(self) -> None:
        first = self.refs[0][1] if self.refs else None
        if self.compare and self.weft is not None and first:
            self.ratio = self.weft / first
        if self.check is not None:
            try:
                self.met = bool(self.check(self.weft, self.ratio))
            except TypeError:  # a figure is missing
                self.met = False

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "weft": self.weft,
            "references": {label: value for label, value in self.refs},
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target or None,
            "met": self.met,
        }


@dataclass
class ScenarioResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def at_least(limit: float) -> Callable[[float | None, float | None], bool]:
    return lambda weft, _ratio: weft is not None and weft >= limit


def at_most(limit: float) -> Callable[[float | None, float | None], bool]:
    return lambda weft, _ratio: weft is not None and weft <= limit


def below(limit: float) -> Callable[[float | None, float | None], bool]:
    return lambda weft, _ratio: weft is not None and weft < limit


def ratio_at_least(limit: float) -> Callable[[float | None, float | None], bool]:
    return lambda _weft, ratio: ratio is not None and ratio >= limit


def ratio_above(limit: float) -> Callable[[float | None, float | None], bool]:
    return lambda _weft, ratio: ratio is not None and ratio > limit


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percentiles(samples: array[int] | list[int]) -> dict[str, float | None]:
    """p50/p99/p999/max of microsecond samples, in milliseconds (nearest rank)."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] / 1000

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "p999_ms": rank(0.999),
        "max_ms": ordered[-1] / 1000,
    }


def load_latencies(paths: Iterable[Path]) -> array[int]:
    merged: array[int] = array("q")
    for path in paths:
        if path.exists():
            with open(path, "rb") as source:
                merged.frombytes(source.read())
    return merged


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def render_table(rows: list[Row], *, enforce: bool) -> str:
    header = ("scenario", "metric", "weft", "reference(s)", "ratio", "target", "result")
    lines: list[tuple[str, ...]] = []
    for row in rows:
        refs = "; ".join(f"{label} {_fmt(value, row.digits)}" for label, value in row.refs)
        if row.met is None:
            result = ""
        elif not enforce:
            result = "(met)" if row.met else "(missed)"
        else:
            result = "met" if row.met else "MISSED"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(
            (row.scenario, row.metric, _fmt(row.weft, row.digits), refs or "-", ratio)
            + (row.target or "-", result)
        )
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    right = {2, 4}

    def render(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [render(header), render(tuple("-" * w for w in widths))]
    previous = None
    for line in lines:
        if previous is not None and line[0] != previous:
            out.append("")
        out.append(render(line))
        previous = line[0]
    return "\n".join(out)
