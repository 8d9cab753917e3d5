"""`python -m tibridge.publisher` (or `tibridge-publisher`): the publisher as its own process, settings from TIBRIDGE_*;
consumes scored/publisher until SIGTERM."""

from tibridge.common import runtime
from tibridge.publisher.app import SPEC


def main() -> int:
    return runtime.main(SPEC)


if __name__ == "__main__":
    raise SystemExit(main())
