"""`python -m tibridge.collector` (or `tibridge-collector`): the collector as its own process, settings from TIBRIDGE_*;
one pass (TIBRIDGE_COLLECTOR_MODE=once, the default) or a pass every interval (loop)."""

from tibridge.collector.app import build
from tibridge.collector.settings import CollectorSettings
from tibridge.common.entrypoint import run_process


def main() -> int:
    return run_process(CollectorSettings, build)


if __name__ == "__main__":
    raise SystemExit(main())
