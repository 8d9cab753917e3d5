"""The container engine the project's scripts set up (docker where one answers, else podman), as tests use it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.container.compose import REPO

CONTAINERS_SCRIPT = REPO / "scripts" / "containers.sh"
COMMAND_TIMEOUT = 120.0
IMAGE_TAG = "local"
# Every image `make images` builds, by the name in its tag.
IMAGE_NAMES = ("collector", "scorer", "publisher", "sandbox", "sbdouble")


class EngineUnavailable(Exception):
    """No engine can run containers here; the message says why."""


@dataclass(frozen=True)
class Engine:
    name: str  # docker or podman
    environment: Mapping[str, str]

    def run(
        self, *arguments: str, input: str | None = None, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [self.name, *arguments],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.environment},
            check=False,
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"`{self.name} {' '.join(arguments[:3])} …` exited {completed.returncode}: {completed.stderr.strip()}"
            )
        return completed

    def image_config(self, image: str) -> dict[str, Any]:
        """The image's `Config` (User, Env, Entrypoint, Cmd, Healthcheck, ExposedPorts)."""
        config = json.loads(self.run("image", "inspect", "--format", "{{json .Config}}", image).stdout)
        assert isinstance(config, dict)
        return config

    def image_healthcheck(self, image: str) -> list[str]:
        """The image's HEALTHCHECK test (["CMD", ...]); docker keeps it in Config, podman beside it."""
        (inspected,) = json.loads(self.run("image", "inspect", image).stdout)
        healthcheck = inspected.get("Config", {}).get("Healthcheck") or inspected.get("Healthcheck") or {}
        test = healthcheck.get("Test", [])
        assert isinstance(test, list)
        return [str(word) for word in test]

    def image_size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", image, check=False).returncode == 0

    def run_once(self, image: str, *command: str, entrypoint: str | None = None, flags: Sequence[str] = ()) -> str:
        """Runs a throw-away container to the end, without network, and returns its output."""
        arguments = ["run", "--rm", "--network", "none", *flags]
        if entrypoint is not None:
            arguments += ["--entrypoint", entrypoint]
        return self.run(*arguments, image, *command).stdout


def image(name: str) -> str:
    return f"tibridge-{name}:{IMAGE_TAG}"


def _script(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CONTAINERS_SCRIPT), *arguments], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def detect() -> Engine:
    """The engine `scripts/containers.sh` builds with, ready to run containers; raises EngineUnavailable."""
    found = _script("engine")
    name = found.stdout.strip()
    if found.returncode != 0:
        raise EngineUnavailable(name or found.stderr.strip())
    environment: dict[str, str] = {}
    if name == "podman":
        for line in _script("env").stdout.splitlines():
            key, _, value = line.partition("=")
            environment[key] = value
        if not os.path.exists(environment.get("CONTAINERS_CONF", "")):
            raise EngineUnavailable("podman is not set up yet: `make images` installs and configures it")
    engine = Engine(name, environment)
    missing = [image(each) for each in IMAGE_NAMES if not engine.has_image(image(each))]
    if missing:
        raise EngineUnavailable(f"{', '.join(missing)} not built: `make images` builds them")
    return engine
