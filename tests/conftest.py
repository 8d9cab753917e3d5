"""Shared pytest setup: each area keeps its fixtures in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.servicebus",
    "tests.fixtures.scorer",
]
