"""The checked-in emulator config is what the topology generates."""

from __future__ import annotations

from pathlib import Path

from tibridge.common.topology import emulator_config_json

CHECKED_IN_CONFIG = Path(__file__).resolve().parents[2] / "servicebus" / "config.json"


def test_checked_in_emulator_config_matches_the_topology() -> None:
    assert CHECKED_IN_CONFIG.read_text(encoding="utf-8") == emulator_config_json(), (
        "servicebus/config.json differs from the topology in tibridge.common.topology: run `make emulator-config`"
    )
