"""What one benchmark invocation runs: the scenarios of `make bench` and of `make bench-quick`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    LOGIC_APP = "logic-app-model"
    ALL_IN_ONE = "all-in-one"
    THREE_PROCESS = "three-process"


class Group(StrEnum):
    COMPARISON = "comparison"  # the same data and latencies: the Logic App model and tibridge's shapes
    CEILING = "ceiling"  # a Graph ceiling tibridge is not told about
    SCALING = "scaling"  # the all-in-one run at growing sizes


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: Kind
    group: Group
    indicators: int
    scorers: int = 1
    graph_ceiling: float | None = None
    mode: str = "direct"  # the publisher's ThreatStream mode

    @property
    def is_tibridge(self) -> bool:
        return self.kind is not Kind.LOGIC_APP


def _comparison(indicators: int, *, approval: bool) -> list[Scenario]:
    size = _size(indicators)
    scenarios = [
        Scenario(f"logic-app-model-{size}", "Logic App (model)", Kind.LOGIC_APP, Group.COMPARISON, indicators),
        Scenario(f"all-in-one-{size}", "tibridge all-in-one", Kind.ALL_IN_ONE, Group.COMPARISON, indicators),
        Scenario(
            f"three-process-1-scorer-{size}",
            "tibridge 3 processes, 1 scorer",
            Kind.THREE_PROCESS,
            Group.COMPARISON,
            indicators,
        ),
        Scenario(
            f"three-process-3-scorers-{size}",
            "tibridge 3 processes, 3 scorers",
            Kind.THREE_PROCESS,
            Group.COMPARISON,
            indicators,
            scorers=3,
        ),
    ]
    if approval:
        scenarios.append(
            Scenario(
                f"all-in-one-approval-{size}",
                "tibridge all-in-one, approval mode",
                Kind.ALL_IN_ONE,
                Group.COMPARISON,
                indicators,
                mode="approval",
            )
        )
    return scenarios


def _ceiling(indicators: int, ceiling: int) -> Scenario:
    return Scenario(
        f"graph-ceiling-{ceiling}-{_size(indicators)}",
        f"tibridge all-in-one, Graph ceiling {ceiling}/s",
        Kind.ALL_IN_ONE,
        Group.CEILING,
        indicators,
        graph_ceiling=ceiling,
    )


def _scaling(indicators: int) -> Scenario:
    return Scenario(
        f"all-in-one-{_size(indicators)}", "tibridge all-in-one", Kind.ALL_IN_ONE, Group.SCALING, indicators
    )


def _size(indicators: int) -> str:
    if indicators % 1_000_000 == 0:
        return f"{indicators // 1_000_000}m"
    if indicators % 1000 == 0:
        return f"{indicators // 1000}k"
    return str(indicators)


PLANS: dict[str, list[Scenario]] = {
    # The issue's sizes. The all-in-one run at 10k is also the scaling series' first point.
    "full": [
        *_comparison(10_000, approval=True),
        _ceiling(100_000, 200),
        _ceiling(100_000, 1000),
        _scaling(100_000),
        _scaling(1_000_000),
    ],
    # The same shapes, small: minutes, not an hour.
    "quick": [*_comparison(2_000, approval=False), _ceiling(10_000, 200), _scaling(10_000)],
}
