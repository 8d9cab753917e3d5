"""`python -m tibridge.scorer` (or `tibridge-scorer`): the scorer as its own process, settings from TIBRIDGE_*;
consumes indicators/scorer until SIGTERM."""

from tibridge.common import runtime
from tibridge.scorer.app import SPEC


def main() -> int:
    return runtime.main(SPEC)


if __name__ == "__main__":
    raise SystemExit(main())
