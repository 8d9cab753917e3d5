"""Everything a running sandbox holds: data, models, faults, ThreatStream's store and the stats."""

from __future__ import annotations

from collections.abc import Collection

from tibridge.common.clock import Clock
from tibridge.common.contracts import Classification
from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.dataset import Dataset, generate
from tibridge.sandbox.expected import ExpectedOutcome, expected_outcome
from tibridge.sandbox.faults import Api, FaultInjector, RetryAfterLedger
from tibridge.sandbox.intel import IntelStore
from tibridge.sandbox.reputation import ReputationModel
from tibridge.sandbox.stats import Stats
from tibridge.sandbox.tables import Table, build_tables


class SandboxState:
    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.dataset: Dataset = config.dataset or generate(
            config.indicators,
            config.seed,
            config.resolved_anchor(clock.now()),
            days=config.days,
            repeat_ratio=config.repeat_ratio,
        )
        self.tables: dict[str, Table] = build_tables(self.dataset)
        self.reputations = ReputationModel(config.seed, config.reputations)
        self.faults = FaultInjector(config.seed, config.faults, clock.monotonic)
        self.ledger = RetryAfterLedger(config.retry_after_grace_seconds)
        self.stats = Stats()
        self.intel = IntelStore(clock.now, config.max_objects_per_request)

    def announce_retry_after(self, api: Api, seconds: float) -> None:
        self.ledger.announce(api, self.clock.monotonic(), seconds)

    def reset(self) -> None:
        """Clears the stats, Retry-After windows and ThreatStream's contents; the dataset stays."""
        self.stats = Stats()
        self.ledger.clear()
        self.intel.reset()

    def expected(
        self,
        threshold: int = 75,
        forward_unscorable: bool = False,
        allowed_classifications: Collection[Classification] | None = None,
        drop_non_global: bool = True,
    ) -> ExpectedOutcome:
        return expected_outcome(
            self.dataset,
            self.reputations.lookup,
            threshold=threshold,
            forward_unscorable=forward_unscorable,
            allowed_classifications=allowed_classifications,
            drop_non_global=drop_non_global,
        )
