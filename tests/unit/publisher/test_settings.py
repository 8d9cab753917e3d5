"""Publisher settings: defaults, and one clear line per setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tibridge.common.settings import SettingsError, load_settings
from tibridge.publisher.settings import PublisherSettings, PublishMode, TlpSpelling

CREDENTIALS = {"bus": "memory", "threatstream_username": "analyst", "threatstream_api_key": "secret-key"}


def test_defaults_are_approval_mode_private_batches_of_a_thousand() -> None:
    settings = load_settings(PublisherSettings, **CREDENTIALS)
    assert settings.threatstream.base_url == "https://api.threatstream.com/api"
    publishing = settings.publisher
    assert (publishing.mode, publishing.batch_size, publishing.batch_age_seconds) == (PublishMode.APPROVAL, 1000, 120.0)
    assert (publishing.classification, publishing.auto_approve, publishing.default_lifetime_days) == (
        "private",
        False,
        90,
    )
    assert (publishing.owner_tag, publishing.tlp_spelling) == ("tibridge", TlpSpelling.SAFE)
    assert "secret-key" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"threatstream_api_key": None}, "TIBRIDGE_THREATSTREAM_USERNAME and TIBRIDGE_THREATSTREAM_API_KEY"),
        ({"threatstream_base_url": "http://threatstream.example.com/api"}, "TIBRIDGE_THREATSTREAM_BASE_URL"),
        ({"threatstream_base_url": "http://127.0.0.1:9/api"}, "TIBRIDGE_DEV_MODE=true"),
        (
            {"publisher_batch_size": 5000, "publisher_max_in_flight": 100},
            "TIBRIDGE_PUBLISHER_MAX_IN_FLIGHT (100) must be at least",
        ),
        ({"publisher_mode": "queue"}, "TIBRIDGE_PUBLISHER_MODE"),
        ({"publisher_owner_tag": "two words"}, "TIBRIDGE_PUBLISHER_OWNER_TAG"),
        ({"publisher_tlp_spelling": "white"}, "TIBRIDGE_PUBLISHER_TLP_SPELLING"),
        ({"publisher_session_expiry_slack_percent": 150}, "TIBRIDGE_PUBLISHER_SESSION_EXPIRY_SLACK_PERCENT"),
    ],
)
def test_bad_settings_say_what_to_fix(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(PublisherSettings, **{**CREDENTIALS, **overrides})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_a_dry_run_needs_no_credentials(tmp_path: Path) -> None:
    settings = load_settings(PublisherSettings, bus="memory", publisher_dry_run_file=tmp_path / "out.jsonl")
    assert settings.threatstream.api_key is None
