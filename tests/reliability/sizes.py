"""How big each reliability scenario runs: fast inside `make test`, full in `make reliability`."""

from __future__ import annotations

import os
from dataclasses import dataclass

SIZE_VARIABLE = "TIBRIDGE_RELIABILITY"


@dataclass(frozen=True)
class Size:
    name: str
    # Fault matrix: indicators per run, and whether every (API, fault) cell runs or one mixed cell per shape.
    fault_indicators: int
    every_fault_cell: bool
    # Crash test: indicators, and SIGKILLs per service during the run.
    crash_indicators: int
    kills_per_service: int
    # Property tests of decoding: examples per property.
    decode_examples: int


FAST = Size(
    name="fast",
    fault_indicators=800,
    every_fault_cell=False,
    crash_indicators=1500,
    kills_per_service=1,
    decode_examples=300,
)
FULL = Size(
    name="full",
    fault_indicators=2000,
    every_fault_cell=True,
    crash_indicators=20000,
    kills_per_service=3,
    decode_examples=5000,
)


def current_size() -> Size:
    """FULL when TIBRIDGE_RELIABILITY=full (`make reliability`), else FAST; read at collection, for parameters."""
    chosen = os.environ.get(SIZE_VARIABLE, "fast").strip().lower()
    if chosen not in ("fast", "full"):
        raise ValueError(f"{SIZE_VARIABLE} must be fast or full, not {chosen!r}")
    return FULL if chosen == "full" else FAST
