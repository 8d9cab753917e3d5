"""Issue 7's promise, as a user runs it: `tibridge sandbox --env-file` in one process, `tibridge run --once`
with that environment in another, and the sandbox then holds exactly what the seeded data says it must."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tibridge.cli.demo import reconcile

TIBRIDGE = [sys.executable, "-m", "tibridge.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    env_file = tmp_path / "sandbox.env"
    process = subprocess.Popen(
        [*TIBRIDGE, "sandbox", "--port", str(port), "--env-file", str(env_file), "--indicators", "300", "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if env_file.exists() and httpx.get(f"{base}/_sandbox/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"the sandbox did not start: {output}")
            time.sleep(0.2)
        yield base, _read_env_file(env_file)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("mode", ["direct"])
def test_run_once_against_the_sandbox(sandbox_process: tuple[str, dict[str, str]], tmp_path: Path, mode: str) -> None:
    base, sandbox_env = sandbox_process
    env = {name: value for name, value in os.environ.items() if not name.startswith("TIBRIDGE_")}
    env.update(sandbox_env)
    env.update(
        {
            "TIBRIDGE_HEALTH_PORT": "0",
            "TIBRIDGE_CHECKPOINT_PATH": str(tmp_path / "checkpoint.json"),
            "TIBRIDGE_PUBLISHER_MODE": mode,
            "TIBRIDGE_PUBLISHER_BATCH_AGE_SECONDS": "1",
        }
    )
    run = subprocess.run([*TIBRIDGE, "run", "--once"], env=env, capture_output=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr.decode()[-3000:]

    expected = httpx.get(f"{base}/_sandbox/expected", timeout=10).json()
    threatstream = httpx.get(f"{base}/_sandbox/reconcile", timeout=10).json()["problems"]
    stats = httpx.get(f"{base}/_sandbox/stats", timeout=10).json()
    assert expected["threatstream"]["active"], "the seeded data should make something publishable"
    assert reconcile(threatstream, stats) == []
    assert stats["threatstream"]["duplicates_created"] == 0
    # The secret must not have reached the logs.
    assert sandbox_env["TIBRIDGE_THREATSTREAM_API_KEY"] not in (run.stdout + run.stderr).decode()
