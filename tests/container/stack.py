"""Starts a compose project's services one by one with podman or docker, as compose would, without compose.

Networking is the one translation: compose puts services on a network where they find each other by name,
and the services share the sandbox's namespace (network_mode "service:sandbox"). Here every container joins
one private network namespace (that of the first one started, which has no outside network at all) and a
hosts file maps every service name to 127.0.0.1, so names and loopback both mean what they mean under
compose, no port is published on the host and nothing can collide with what else runs on the machine.
Start order and health gates follow `depends_on`; a health gate runs the service's (or its image's)
healthcheck inside the container until it passes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.container.compose import Project, Service
from tests.container.engine import Engine

HEALTH_TIMEOUT_SECONDS = 120.0
HEALTH_POLL_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10


class Stack:
    def __init__(self, engine: Engine, project: Project, work_dir: Path) -> None:
        self.engine = engine
        self.project = project
        self.prefix = f"{project.name}-test-{uuid.uuid4().hex[:8]}"
        self._hosts = work_dir / "hosts"
        self._hosts.write_text(f"127.0.0.1 localhost {' '.join(project.services)}\n", encoding="utf-8")
        self._namespace_owner: str | None = None
        self.started: list[str] = []
        self._volumes: set[str] = set()

    def container(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    def up(self) -> None:
        for name in self.project.start_order():
            service = self.project.services[name]
            for dependency, condition in service.depends_on.items():
                self.wait_until(dependency, condition)
            self._start(service)

    def _start(self, service: Service) -> None:
        arguments = ["run", "--detach", "--name", self.container(service.name)]
        if self._namespace_owner is None:
            arguments += ["--network", "none"]
        else:
            # network_mode "service:X" and the compose network are the same namespace here.
            arguments += ["--network", f"container:{self._namespace_owner}"]
        arguments += ["--volume", f"{self._hosts}:/etc/hosts:ro"]
        for volume in service.volumes:
            if volume.is_bind:
                source = str((self.project.directory / volume.source).resolve())
            else:
                source = f"{self.prefix}-{volume.source}"
                self._volumes.add(source)
            arguments += ["--volume", f"{source}:{volume.target}{':ro' if volume.read_only else ''}"]
        if service.read_only:
            arguments.append("--read-only")
        for path in service.tmpfs:
            arguments += ["--tmpfs", path]
        for key, value in service.environment.items():
            arguments += ["--env", f"{key}={value}"]
        self.engine.run(*arguments, service.image, *service.command)
        self.started.append(service.name)
        if self._namespace_owner is None:
            self._namespace_owner = self.container(service.name)

    def wait_until(self, service: str, condition: str) -> None:
        if condition == "service_started":
            assert self.running(service), f"{service} is not running:\n{self.logs(service)}"
            return
        assert condition == "service_healthy", f"depends_on condition {condition!r} is not modelled"
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while not self.healthy(service):
            assert self.running(service), f"{service} stopped before it became healthy:\n{self.logs(service)}"
            assert time.monotonic() < deadline, f"{service} not healthy in {HEALTH_TIMEOUT_SECONDS:.0f} s"
            time.sleep(HEALTH_POLL_SECONDS)

    def healthy(self, service: str) -> bool:
        test = self.project.services[service].healthcheck_test or tuple(
            self.engine.image_healthcheck(self.project.services[service].image)
        )
        kind, *command = test
        if kind == "CMD-SHELL":
            command = ["sh", "-c", " ".join(command)]
        assert kind in ("CMD", "CMD-SHELL"), f"{service}: healthcheck {test!r} runs nothing"
        probe = self.engine.run("exec", self.container(service), *command, check=False, timeout=30)
        return probe.returncode == 0

    def running(self, service: str) -> bool:
        state = self.engine.run(
            "inspect", "--format", "{{.State.Running}}", self.container(service), check=False
        ).stdout.strip()
        return state == "true"

    def kill(self, service: str) -> None:
        """SIGKILL: the process gets no chance to finish or hand anything back."""
        self.engine.run("kill", "--signal", "KILL", self.container(service))

    def stop(self, service: str) -> int:
        """SIGTERM, then the exit code (SIGKILL after STOP_TIMEOUT_SECONDS would show as 137)."""
        self.engine.run("stop", "--time", str(STOP_TIMEOUT_SECONDS), self.container(service), timeout=60)
        code = self.engine.run("inspect", "--format", "{{.State.ExitCode}}", self.container(service)).stdout
        return int(code.strip())

    def start_again(self, service: str) -> None:
        self.engine.run("start", self.container(service))

    def exec(self, service: str, *command: str, input: str | None = None, timeout: float = 60) -> str:
        return self.engine.run(
            "exec", "--interactive", self.container(service), *command, input=input, timeout=timeout
        ).stdout

    def logs(self, service: str) -> str:
        completed = self.engine.run("logs", "--tail", "40", self.container(service), check=False)
        return (completed.stdout + completed.stderr)[-6000:]

    def all_logs(self) -> str:
        return "\n".join(f"--- {service} ---\n{self.logs(service)}" for service in self.started)

    def down(self) -> None:
        for service in reversed(self.started):
            # docker's `rm` has no stop timeout: stop first, then remove whatever state the container is in.
            self.engine.run("stop", "--time", str(STOP_TIMEOUT_SECONDS), self.container(service), check=False)
            self.engine.run("rm", "--force", self.container(service), check=False)
        for volume in self._volumes:
            self.engine.run("volume", "rm", "--force", volume, check=False)


@contextlib.contextmanager
def running(engine: Engine, project: Project, work_dir: Path) -> Iterator[Stack]:
    stack = Stack(engine, project, work_dir)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
