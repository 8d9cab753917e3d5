"""One service as its own process, with nothing but its own distribution installed (the images' entry points).

`python -m tibridge.scorer` (or the `tibridge-scorer` script) calls `run_process(ScorerSettings, build)`:
settings from the TIBRIDGE_* environment, then `run_service`. Bad settings end it with one line per problem
on stderr and exit code 2, as the `tibridge` command does.
"""

from __future__ import annotations

import asyncio
import sys

from tibridge.common.runtime import Build, SettingsT, run_service
from tibridge.common.settings import SettingsError, load_settings

EXIT_BAD_SETTINGS = 2
EXIT_INTERRUPTED = 130


def run_process(settings_class: type[SettingsT], build: Build[SettingsT]) -> int:
    try:
        return asyncio.run(run_service(load_settings(settings_class), build))
    except SettingsError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
