"""The results table: one row per metric, a column per server, and the ratio edgetftp/tftpd-hpa."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.stats import median

MISSING = "\u2013"  # an en dash: not measurable for that server (e.g. windowsize on tftpd-hpa 5.2) or not run
Value = float | int | str | None


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: Literal["lower", "higher", "info"]
    target: str = ""  # the target, as text
    digits: int = 3  # significant digits shown


def ratio(edgetftp: Value, reference: Value) -> float | None:
    """edgetftp / tftpd-hpa when both are numbers and the reference is not zero, else None."""
    if not isinstance(edgetftp, int | float) or not isinstance(reference, int | float):
        return None
    if isinstance(edgetftp, bool) or isinstance(reference, bool) or reference == 0:
        return None
    return edgetftp / reference


def format_value(value: Value, digits: int = 3) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def median_of_runs(runs: Sequence[Mapping[str, Value]], key: str) -> Value:
    """Median of a metric over repeated runs; text values (e.g. "400/400") keep the worst-looking one."""
    values = [run.get(key) for run in runs if run.get(key) is not None]
    if not values:
        return None
    numbers = [value for value in values if isinstance(value, int | float) and not isinstance(value, bool)]
    if len(numbers) == len(values):
        return median(numbers)
    return sorted(str(value) for value in values)[0]


def render_table(
    metrics: Sequence[Metric],
    values: Mapping[str, Mapping[str, Value]],
    peers: Sequence[str] = ("edgetftp", "tftpd-hpa"),
) -> str:
    """A Markdown table.  ``values[peer][metric.key]`` is the (median) figure; missing keys show MISSING."""
    header = ["scenario", *peers, f"{peers[0]}/{peers[1]}", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        figures = [values.get(peer, {}).get(metric.key) for peer in peers]
        quotient = ratio(figures[0], figures[1])
        cells = [
            metric.label,
            *(format_value(figure, metric.digits) for figure in figures),
            MISSING if quotient is None else f"{quotient:.2f}",
            metric.target,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
