"""Shared pytest setup: each area keeps its fixtures in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.collector",
    "tests.fixtures.publisher",
    "tests.fixtures.runtime",
    "tests.fixtures.sandbox",
    "tests.fixtures.servicebus",
    "tests.fixtures.scorer",
]
