"""Static checks of the images: no Docker engine here, so what a build would trip over is checked by reading."""

from __future__ import annotations

import fnmatch
import re

import pytest
import typer.main

from tests.unit.deploy.manifests import IMAGES, REPO, Instruction, dockerfile, only, pyproject
from tibridge.cli.main import app as cli


def _shared_part(image: str) -> tuple[Instruction, ...]:
    """Everything before the image's own tail (what it exposes, checks and runs)."""
    instructions = dockerfile(image)
    tail = next(i for i, ins in enumerate(instructions) if ins.keyword in {"EXPOSE", "HEALTHCHECK", "ENTRYPOINT"})
    return instructions[:tail]


def _copy_sources(image: str) -> list[str]:
    sources: list[str] = []
    for instruction in only(dockerfile(image), "COPY"):
        words = instruction.words()
        if any(word.startswith("--from") for word in words):
            continue
        sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def test_every_image_builds_the_same_environment() -> None:
    # One build stage for all, so a fix to one cannot silently miss the others.
    reference = _shared_part("scorer")
    for image in IMAGES:
        assert _shared_part(image) == reference, f"{image}'s Dockerfile drifted from the scorer's build stage"


@pytest.mark.parametrize("image", IMAGES)
def test_image_runs_its_tibridge_command(image: str) -> None:
    (entrypoint,) = only(dockerfile(image), "ENTRYPOINT")
    assert entrypoint.exec_form() == ["tibridge", image]
    command = typer.main.get_command(cli)
    assert image in getattr(command, "commands", {}), f"`tibridge {image}` is not a command of the CLI"


@pytest.mark.parametrize("image", IMAGES)
def test_image_checks_its_health(image: str) -> None:
    (healthcheck,) = only(dockerfile(image), "HEALTHCHECK")
    probe = " ".join(healthcheck.exec_form())
    if image == "sandbox":
        (cmd,) = only(dockerfile(image), "CMD")
        port = cmd.exec_form()[cmd.exec_form().index("--port") + 1]
        assert f"http://127.0.0.1:{port}/_sandbox/stats" in probe
    else:
        assert "TIBRIDGE_HEALTH_PORT" in probe
        assert "/healthz" in probe


def test_images_are_multi_stage_on_python_311_slim() -> None:
    instructions = dockerfile("scorer")
    (base,) = [ins for ins in only(instructions, "ARG") if ins.arguments.startswith("PYTHON_IMAGE=")]
    assert base.arguments == "PYTHON_IMAGE=python:3.11-slim"
    stages = [ins.words() for ins in only(instructions, "FROM")]
    assert stages == [["${PYTHON_IMAGE}", "AS", "build"], ["${PYTHON_IMAGE}", "AS", "runtime"]]
    runtime = instructions[instructions.index(only(instructions, "FROM")[1]) :]
    assert [ins for ins in only(runtime, "COPY") if "--from=build" not in ins.arguments] == []


def test_images_install_the_locked_cli_without_dev_tools_using_the_makefiles_uv() -> None:
    instructions = dockerfile("scorer")
    syncs = [ins.words() for ins in only(instructions, "RUN") if ins.words()[:2] == ["uv", "sync"]]
    assert len(syncs) == 2
    for sync in syncs:
        assert {"--frozen", "--no-dev"} <= set(sync)
        assert sync[sync.index("--package") + 1] == pyproject()["project"]["name"]
    assert "--no-editable" in syncs[-1]
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv is not None
    (uv_version,) = [ins for ins in only(instructions, "ARG") if ins.arguments.startswith("UV_VERSION=")]
    assert uv_version.arguments == f"UV_VERSION={makefile_uv[1]}"


def test_images_copy_every_workspace_member_and_nothing_missing() -> None:
    sources = _copy_sources("scorer")
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfiles COPY {source}, which does not exist"
    members = pyproject()["tool"]["uv"]["workspace"]["members"]
    for member in members:
        assert f"{member}/pyproject.toml" in sources, f"workspace member {member} is not in the images"
        assert f"{member}/src" in sources
    assert {"pyproject.toml", "uv.lock", "src"} <= set(sources)


def test_images_run_as_an_unprivileged_numeric_user() -> None:
    (user,) = only(dockerfile("scorer"), "USER")
    uid, _, gid = user.arguments.partition(":")
    assert re.fullmatch(r"[1-9][0-9]*", uid), "USER must be a numeric uid other than root's"
    assert re.fullmatch(r"[1-9][0-9]*", gid), "USER must name a numeric gid other than root's"


@pytest.mark.parametrize("image", IMAGES)
def test_images_carry_no_secrets(image: str) -> None:
    for instruction in [*only(dockerfile(image), "ENV"), *only(dockerfile(image), "ARG")]:
        names = [word.partition("=")[0] for word in instruction.words()]
        for name in names:
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN|CONNECTION_STRING", name), f"{image}: {name} in the image"


def test_dockerignore_keeps_local_state_out_and_what_images_copy_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", ".tools", ".env", "*.env"} <= set(patterns)
    for source in _copy_sources("scorer"):
        ignored = [pattern for pattern in patterns if fnmatch.fnmatch(source, pattern.removeprefix("**/"))]
        assert not ignored, f".dockerignore {ignored} drops {source}, which the images COPY"
