from pathlib import Path

from tibridge.cli.settings_docs import readme_with_table, settings_table

README = Path(__file__).parents[3] / "README.md"


def test_readme_carries_the_generated_settings_table() -> None:
    text = README.read_text()
    stale = "the README's settings table is stale: run `tibridge config docs --readme README.md`"
    assert readme_with_table(text) == text, stale


def test_every_setting_is_documented_and_secrets_are_marked() -> None:
    rows = settings_table().splitlines()[2:]
    assert rows
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert cells[0].startswith("`TIBRIDGE_"), row
        assert cells[2], f"{cells[0]} has no description"
    secrets = {row.split("`")[1] for row in rows if row.rstrip().endswith("| yes |")}
    assert {"TIBRIDGE_THREATSTREAM_API_KEY", "TIBRIDGE_SERVICEBUS_CONNECTION_STRING"} <= secrets
