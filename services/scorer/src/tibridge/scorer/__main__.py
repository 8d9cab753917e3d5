"""`python -m tibridge.scorer` (or `tibridge-scorer`): the scorer as its own process, settings from TIBRIDGE_*;
consumes indicators/scorer until SIGTERM."""

from tibridge.common.entrypoint import run_process
from tibridge.scorer.app import build
from tibridge.scorer.settings import ScorerSettings


def main() -> int:
    return run_process(ScorerSettings, build)


if __name__ == "__main__":
    raise SystemExit(main())
