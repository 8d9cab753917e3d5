"""What the reliability runs measured, gathered per scenario and written as tests/reliability/results.md."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    scenario: str
    faults_injected: int = 0
    kills: int = 0
    hostile_rows: int = 0
    delivered: int = 0
    expected: int = 0
    duplicates: int = 0
    inside_retry_after: int = 0
    leaks: int = 0
    dead_lettered: int = 0
    passed: bool = True
    note: str = ""

    @property
    def ratio(self) -> str:
        return f"{self.delivered / self.expected:.3f}" if self.expected else "—"


@dataclass
class Figures:
    rows: dict[str, list[Figure]] = field(default_factory=lambda: defaultdict(list))

    def record(self, section: str, figure: Figure) -> None:
        self.rows[section].append(figure)

    def markdown(self, *, size: str, machine: str) -> str:
        lines = [
            "# Reliability results",
            "",
            f"Written by `make reliability` (size: {size}) on {machine}. Every figure comes from the run itself: the",
            "sandbox's request statistics and ThreatStream contents, the buses' queues, the scanned outputs.",
            "",
        ]
        totals = Figure("total")
        for section, figures in self.rows.items():
            lines += [
                f"## {section}",
                "",
                "| scenario | faults injected | kills | hostile rows | delivered ÷ expected | duplicates | "
                "inside Retry-After | leaks | dead-lettered | result |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for figure in figures:
                result = "pass" if figure.passed else "**FAIL**"
                if figure.note:
                    result += f" — {figure.note}"
                lines.append(
                    f"| {figure.scenario} | {figure.faults_injected:,} | {figure.kills} | {figure.hostile_rows} | "
                    f"{figure.delivered:,} ÷ {figure.expected:,} = {figure.ratio} | {figure.duplicates} | "
                    f"{figure.inside_retry_after} | {figure.leaks} | {figure.dead_lettered} | {result} |"
                )
                totals = Figure(
                    "total",
                    faults_injected=totals.faults_injected + figure.faults_injected,
                    kills=totals.kills + figure.kills,
                    hostile_rows=totals.hostile_rows + figure.hostile_rows,
                    delivered=totals.delivered + figure.delivered,
                    expected=totals.expected + figure.expected,
                    duplicates=totals.duplicates + figure.duplicates,
                    inside_retry_after=totals.inside_retry_after + figure.inside_retry_after,
                    leaks=totals.leaks + figure.leaks,
                    dead_lettered=totals.dead_lettered + figure.dead_lettered,
                    passed=totals.passed and figure.passed,
                )
            lines.append("")
        lines += [
            "## Totals",
            "",
            f"* faults injected: {totals.faults_injected:,}; SIGKILLs: {totals.kills}; hostile rows tried: "
            f"{totals.hostile_rows}",
            f"* delivered ÷ expected: {totals.delivered:,} ÷ {totals.expected:,} = {totals.ratio}; duplicates: "
            f"{totals.duplicates}; requests inside a Retry-After window: {totals.inside_retry_after}; "
            f"secret leaks: {totals.leaks}",
            f"* every scenario passed: {'yes' if totals.passed else 'no'}",
            "",
        ]
        return "\n".join(lines)
