"""Adding a setting touches its settings class and nothing else by hand.

A field added to a section (here, to the scorer's TIBRIDGE_SCORER_* section) is, with no other edit: read from
its environment variable, validated with a line naming that variable, listed in the README's table, known to
`config check`, and in the hands of the code the section configures.
"""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import Field

from tibridge.cli import commands, settings_docs
from tibridge.cli.registry import SERVICES
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import Reputation
from tibridge.common.producer import Producer
from tibridge.common.runtime import ServiceName
from tibridge.common.settings import SettingsError, load_settings
from tibridge.scorer import app
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.handler import Reputations, ScorerHandler
from tibridge.scorer.reputation import GraphCounts
from tibridge.scorer.settings import ScorerSettings, ScoringSettings

NEW = "TIBRIDGE_SCORER_REVIEW_BELOW"


class ScoringWithANewSetting(ScoringSettings):
    review_below: int = Field(80, ge=0, le=100, description="A setting added only here.")


class ScorerWithANewSetting(ScorerSettings):
    scorer: ScoringWithANewSetting


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer's spec as it would be with the field added to its settings class."""
    services = dict(SERVICES)
    services[ServiceName.SCORER] = dataclasses.replace(SERVICES[ServiceName.SCORER], settings=ScorerWithANewSetting)
    monkeypatch.setattr(settings_docs, "SERVICES", services)
    monkeypatch.setattr(commands, "SERVICES", services)
    monkeypatch.setenv("TIBRIDGE_BUS", "memory")


def test_it_is_read_from_its_variable_and_validated_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NEW, "60")
    assert load_settings(ScorerWithANewSetting).scorer.review_below == 60
    monkeypatch.setenv(NEW, "high")
    with pytest.raises(SettingsError) as caught:
        load_settings(ScorerWithANewSetting)
    [problem] = caught.value.problems
    assert problem.startswith(f"{NEW}: Input should be a valid integer")
    assert problem.endswith("— A setting added only here.")


def test_it_is_in_the_settings_table_and_known_to_config_check() -> None:
    [row] = [row for row in settings_docs.settings_table().splitlines() if row.startswith(f"| `{NEW}` |")]
    assert row == f"| `{NEW}` | scorer | A setting added only here. | `80` | no |"
    assert commands.unknown_settings({NEW: "60"}) == []


def test_the_code_the_section_configures_gets_it_without_an_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[ScoringSettings] = []

    class WatchedHandler(ScorerHandler):
        def __init__(
            self,
            producer: Producer,
            rules: ScoringSettings,
            cache: SingleFlightCache[Reputation | None],
            reputations: Reputations,
        ) -> None:
            given.append(rules)
            super().__init__(producer, rules, cache, reputations)

    monkeypatch.setattr(app, "ScorerHandler", WatchedHandler)
    settings = load_settings(ScorerWithANewSetting, scorer_review_below=55)
    app.assemble(settings, MemoryBus(), SystemClock(), app.consumer_options(settings), reputations=Unused())
    [rules] = given
    assert rules is settings.scorer
    assert isinstance(rules, ScoringWithANewSetting)
    assert rules.review_below == 55


class Unused:
    """A reputation source nobody asks: assembling the service looks nothing up."""

    async def lookup(self, host: str) -> Reputation | None:
        raise AssertionError("no lookup expected")

    async def probe(self) -> bool:
        return True

    def counts(self) -> GraphCounts:
        return GraphCounts(batch_requests=0, items=0, throttled=0, retries=0)
