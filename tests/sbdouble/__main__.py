"""Run the Service Bus double as a process that several services can share.

    python -m tests.sbdouble --port 5672 [--config servicebus/config.json] [--host 127.0.0.1]

Prints the emulator connection string once it listens; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.sbdouble.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from tests.sbdouble.server import ServiceBusDouble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sbdouble", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="the emulator's config.json")
    arguments = parser.parse_args(argv)
    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with ServiceBusDouble(config, host=arguments.host, port=arguments.port) as double:
        print(double.connection_string, flush=True)
        # A timed wait keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
