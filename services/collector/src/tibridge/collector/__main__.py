"""`python -m tibridge.collector` (or `tibridge-collector`): the collector as its own process, settings from TIBRIDGE_*;
one pass (TIBRIDGE_COLLECTOR_MODE=once, the default) or a pass every interval (loop)."""

from tibridge.collector.app import SPEC
from tibridge.common import runtime


def main() -> int:
    return runtime.main(SPEC)


if __name__ == "__main__":
    raise SystemExit(main())
