"""The control API, the environment it hands out, and the command line."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.fixtures.sandbox import THREATSTREAM_HEADERS, SandboxFactory
from tibridge.sandbox import SandboxConfig, SandboxServer
from tibridge.sandbox.cli import app

ENV_NAMES = {
    "TIBRIDGE_DEV_MODE",
    "TIBRIDGE_CREDENTIAL",
    "TIBRIDGE_LOGANALYTICS_ENDPOINT",
    "TIBRIDGE_LOGANALYTICS_WORKSPACE_ID",
    "TIBRIDGE_GRAPH_BASE_URL",
    "TIBRIDGE_THREATSTREAM_BASE_URL",
    "TIBRIDGE_THREATSTREAM_USERNAME",
    "TIBRIDGE_THREATSTREAM_API_KEY",
    "TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK",
}


def test_only_loopback_is_served() -> None:
    with pytest.raises(ValidationError, match=r"127\.0\.0\.1 only"):
        SandboxConfig(host="0.0.0.0")


async def test_env_points_every_service_at_the_sandbox(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    async with sandbox_factory(threatstream_api_key="key with 'quotes' $and spaces") as server:
        env = server.env()
        assert set(env) == ENV_NAMES
        assert env["TIBRIDGE_GRAPH_BASE_URL"] == f"{server.base_url}/graph/v1.0"
        assert env["TIBRIDGE_THREATSTREAM_BASE_URL"] == f"{server.base_url}/threatstream/api"
        assert env["TIBRIDGE_LOGANALYTICS_ENDPOINT"] == f"{server.base_url}/loganalytics"
        oldest = server.dataset.rows[0].time_generated
        lookback = timedelta(days=int(env["TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK"].strip("PD")))
        assert server.state.clock.now() - lookback < oldest, "a first collector pass reaches the oldest row"
        path = tmp_path / "sandbox.env"
        server.write_env_file(path)
    shell = await asyncio.create_subprocess_exec(
        shutil.which("bash") or "/bin/bash",
        "-c",
        f"set -a; . {shlex.quote(str(path))}; set +a; env -0",
        stdout=asyncio.subprocess.PIPE,
        env={},
    )
    sourced = (await asyncio.wait_for(shell.communicate(), timeout=30))[0].decode()
    loaded = dict(item.split("=", 1) for item in sourced.split("\0") if item.startswith("TIBRIDGE_"))
    assert loaded == env


async def test_stats_reset_and_expected(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url, headers=THREATSTREAM_HEADERS) as client:
        objects = [{"srcip": "203.0.113.9", "itype": "mal_ip"}]
        await client.patch("/threatstream/api/v2/intelligence/", json={"meta": {}, "objects": objects})
        stats = (await client.get("/_sandbox/stats")).json()
        assert set(stats) == {
            "requests",
            "inside_retry_after",
            "faults_injected",
            "loganalytics",
            "graph",
            "threatstream",
        }
        assert (stats["requests"]["threatstream"], stats["threatstream"]["objects"]) == ({"202": 1}, 1)
        await client.post("/_sandbox/reset")
        reset = (await client.get("/_sandbox/stats")).json()
        assert (reset["requests"]["threatstream"], reset["threatstream"]["objects"]) == ({}, 0)
        expected = (await client.get("/_sandbox/expected")).json()
        assert expected == sandbox.expected().to_json()
        assert len(expected["indicators"]) == len(sandbox.dataset.newest)
        forwarded = (await client.get("/_sandbox/expected", params={"forward_unscorable": "true"})).json()
        assert forwarded["counts"]["publish"] > expected["counts"]["publish"]
        assert (await client.get("/_sandbox/expected", params={"threshold": "x"})).status_code == 400


async def test_the_cli_serves_until_sigterm(tmp_path: Path) -> None:
    env_file, expected_file = tmp_path / "sandbox.env", tmp_path / "expected.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tibridge.sandbox", "--port", "0", "--indicators", "50", "--env-file", str(env_file),
        "--expected", str(expected_file), "--fault", "graph.p429=0.5", "--anchor", "2026-11-01T00:00:00",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert "listening on http://127.0.0.1:" in line
        base_url = line.split("listening on ", 1)[1].split()[0]
        assert f"TIBRIDGE_GRAPH_BASE_URL={base_url}/graph/v1.0" in env_file.read_text()
        assert expected_file.exists()
        async with httpx.AsyncClient(base_url=base_url) as client:
            faults = (await client.get("/_sandbox/faults")).json()
        assert faults["graph"]["p429"] == 0.5
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


def test_the_cli_names_a_bad_flag_in_one_line() -> None:
    result = CliRunner().invoke(app, ["--fault", "graph.p429=7"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("tibridge sandbox: invalid faults for graph")
