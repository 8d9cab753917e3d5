"""Everything a running sandbox holds: data, models, faults, ThreatStream's store and the stats."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from tibridge.common.clock import Clock
from tibridge.common.contracts import Classification
from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.dataset import Dataset, generate
from tibridge.sandbox.expected import ExpectedOutcome, expected_outcome
from tibridge.sandbox.faults import Api, FaultInjector, FaultKind, RequestLimits, RetryAfterLedger
from tibridge.sandbox.intel import IntelStore, StoreRules
from tibridge.sandbox.reputation import ReputationModel
from tibridge.sandbox.seeding import dataset_values, foreign_entries, whitelist
from tibridge.sandbox.stats import Stats
from tibridge.sandbox.tables import Table, build_tables
from tibridge.sandbox.vocabulary import ITYPES


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
        self.faults = FaultInjector(config.seed, config.faults, clock.monotonic, self._count_fault)
        self.ledger = RetryAfterLedger(config.retry_after_grace_seconds)
        self.loganalytics_limits = RequestLimits(
            config.loganalytics_max_concurrent,
            config.loganalytics_requests_per_window,
            config.loganalytics_window_seconds,
            clock.monotonic,
        )
        self.stats = Stats()
        # What tibridge's key may do; an operator may grant or revoke a right while it runs (POST /_sandbox/...).
        self.threatstream_permissions = frozenset(config.threatstream_permissions)
        values = dataset_values(self.dataset)
        self.intel_rules = StoreRules(
            itypes={**ITYPES, **config.threatstream_extra_itypes},
            tlp=config.threatstream_tlp,
            tlp_refusal=config.threatstream_tlp_refusal,
            whitelist=whitelist(
                values, config.seed, config.threatstream_whitelist_share, config.threatstream_whitelist
            ),
            processing=timedelta(seconds=config.threatstream_processing_seconds),
            max_objects_per_request=config.max_objects_per_request,
            username=config.threatstream_username,
            organization_id=config.threatstream_organization_id,
        )
        self.intel = IntelStore(
            clock.now,
            self.intel_rules,
            lambda: foreign_entries(
                values,
                config.seed,
                config.threatstream_foreign_share,
                self.intel_rules,
                clock.now(),
                config.threatstream_foreign_max_values,
            ),
        )

    def _count_fault(self, api: Api, kind: FaultKind) -> None:
        self.stats.faults_injected[api][str(kind)] += 1

    def announce_retry_after(self, api: Api, seconds: float) -> None:
        self.ledger.announce(api, self.clock.monotonic(), seconds)

    def reset(self) -> None:
        """Clears the stats, Retry-After windows and ThreatStream's contents; the dataset stays."""
        self.stats = Stats()
        self.ledger.clear()
        self.intel.reset()
        self.threatstream_permissions = frozenset(self.config.threatstream_permissions)

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
            threatstream=self.intel_rules,
        )
