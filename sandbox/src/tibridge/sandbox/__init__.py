"""Local stand-ins for Log Analytics, MDTI (Graph) and ThreatStream, with seeded data and fault injection."""

from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.dataset import Dataset, IndicatorRow, generate, load_rows
from tibridge.sandbox.expected import ExpectedOutcome, Outcome, expected_outcome
from tibridge.sandbox.faults import FaultSpec
from tibridge.sandbox.reputation import ReputationModel, reputation_for
from tibridge.sandbox.server import SandboxEndpoints, SandboxServer

__all__ = [
    "Dataset",
    "ExpectedOutcome",
    "FaultSpec",
    "IndicatorRow",
    "Outcome",
    "ReputationModel",
    "SandboxConfig",
    "SandboxEndpoints",
    "SandboxServer",
    "expected_outcome",
    "generate",
    "load_rows",
    "reputation_for",
]
