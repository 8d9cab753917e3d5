"""The reliability suite's two sizes and its figures.

`make test` runs every reliability test at the fast size: small datasets, one run per scenario, a kill or two.
`make reliability` sets TIBRIDGE_RELIABILITY=full: tens of thousands of indicators, every fault on every API,
several kills per service, every hostile row in every mode; at the end of that session the figures each test
recorded (`figures.record(...)`) are written to tests/reliability/results.md.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.figures import Figures
from tests.reliability.sizes import FULL, Size, current_size

RESULTS = Path(__file__).parent / "results.md"


@pytest.fixture(scope="session")
def size() -> Size:
    return current_size()


@pytest.fixture(scope="session")
def figures(size: Size) -> Iterator[Figures]:
    recorded = Figures()
    yield recorded
    if size is FULL:
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        RESULTS.write_text(recorded.markdown(size=size.name, machine=machine), encoding="utf-8")
