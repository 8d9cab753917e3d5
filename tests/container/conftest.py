"""The container tests need images built by `make images` and an engine that runs them; else they skip."""

from __future__ import annotations

import pytest

from tests.container.engine import Engine, EngineUnavailable, detect


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return detect()
    except EngineUnavailable as reason:
        pytest.skip(f"no container engine can run the images here: {reason}")
