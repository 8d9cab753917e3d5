"""`python -m tibridge.publisher` (or `tibridge-publisher`): the publisher as its own process, settings from TIBRIDGE_*;
consumes scored/publisher until SIGTERM."""

from tibridge.common.entrypoint import run_process
from tibridge.publisher.app import build
from tibridge.publisher.settings import PublisherSettings


def main() -> int:
    return run_process(PublisherSettings, build)


if __name__ == "__main__":
    raise SystemExit(main())
