"""Static checks of the Dockerfiles (tests/container builds and runs them where an engine can)."""

from __future__ import annotations

import fnmatch
import importlib.util
import re

import pytest

from tests.unit.deploy.manifests import IMAGES, REPO, SERVICES, Instruction, dockerfile, only, pyproject


def _stages(image: str) -> tuple[tuple[Instruction, ...], tuple[Instruction, ...]]:
    """The shared part (everything up to the final stage's own COPY) and the image's own tail."""
    instructions = dockerfile(image)
    final = instructions.index(only(instructions, "FROM")[-1])
    tail = next(i for i in range(final, len(instructions)) if instructions[i].keyword == "COPY")
    return instructions[:tail], instructions[tail:]


def _copy_sources(image: str) -> list[str]:
    sources: list[str] = []
    for instruction in only(dockerfile(image), "COPY"):
        words = instruction.words()
        if any(word.startswith("--from") for word in words):
            continue
        sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def test_every_image_shares_one_build_stage() -> None:
    # One build stage (and the same start of the final one) for all: the first build caches it for the others.
    reference = _stages("scorer")[0]
    for image in IMAGES:
        assert _stages(image)[0] == reference, f"{image}'s Dockerfile drifted from the scorer's shared stage"


def test_each_image_copies_only_its_own_environment() -> None:
    for image in IMAGES:
        copies = [ins.words() for ins in _stages(image)[1] if ins.keyword == "COPY"]
        assert all(words[0] == "--from=build" for words in copies), f"{image} copies from outside the build stage"
        assert copies[0][1:] == [f"/opt/tibridge-{image}", f"/opt/tibridge-{image}"]
        (path,) = [ins for ins in _stages(image)[1] if ins.keyword == "ENV"]
        assert path.words()[0] == f"PATH=/opt/tibridge-{image}/bin:$PATH"


def test_the_build_stage_makes_one_locked_environment_per_image_from_its_distribution() -> None:
    runs = " ".join(ins.arguments for ins in only(_stages("scorer")[0], "RUN"))
    assert "for image in collector scorer publisher sandbox;" in runs
    assert runs.count("--package tibridge-$image") == 2
    assert "--no-install-workspace" in runs
    assert "--no-editable" in runs
    assert runs.count("--frozen --no-dev") == 2
    assert (
        "UV_PROJECT_ENVIRONMENT=/opt/tibridge-sbdouble /opt/uv/bin/uv sync --quiet --frozen --only-group sbdouble"
        in (runs)
    )
    assert "sbdouble" in pyproject()["dependency-groups"]
    members = {f"tibridge-{name}" for name in ("collector", "scorer", "publisher", "sandbox")}
    assert {pyproject(REPO / member / "pyproject.toml")["project"]["name"] for member in _members()} >= members


def _members() -> list[str]:
    members = pyproject()["tool"]["uv"]["workspace"]["members"]
    assert isinstance(members, list)
    return [str(member) for member in members]


def test_the_build_uses_the_makefiles_uv() -> None:
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv is not None
    (uv_version,) = [ins for ins in only(dockerfile("scorer"), "ARG") if ins.arguments.startswith("UV_VERSION=")]
    assert uv_version.arguments == f"UV_VERSION={makefile_uv[1]}"


def test_images_are_multi_stage_on_python_311() -> None:
    instructions = dockerfile("scorer")
    (base,) = [ins for ins in only(instructions, "ARG") if ins.arguments.startswith("PYTHON_IMAGE=")]
    assert base.arguments == "PYTHON_IMAGE=python:3.11-slim"
    stages = [ins.words() for ins in only(instructions, "FROM")]
    assert stages == [["${PYTHON_IMAGE}", "AS", "build"], ["${PYTHON_IMAGE}", "AS", "runtime"]]


@pytest.mark.parametrize("service", SERVICES)
def test_service_image_runs_its_own_entry_point(service: str) -> None:
    (entrypoint,) = only(dockerfile(service), "ENTRYPOINT")
    assert entrypoint.exec_form() == ["python", "-m", f"tibridge.{service}"]
    assert importlib.util.find_spec(f"tibridge.{service}.__main__") is not None


def test_support_images_run_the_sandbox_and_the_double() -> None:
    (sandbox,) = only(dockerfile("sandbox"), "ENTRYPOINT")
    assert sandbox.exec_form() == ["python", "-m", "tibridge.sandbox"]
    (double,) = only(dockerfile("sbdouble"), "ENTRYPOINT")
    assert double.exec_form() == ["python", "-m", "tests.sbdouble"]
    (command,) = only(dockerfile("sbdouble"), "CMD")
    arguments = command.exec_form()
    assert arguments[arguments.index("--config") + 1] == "/ServiceBus_Emulator/ConfigFiles/Config.json"


@pytest.mark.parametrize("image", IMAGES)
def test_image_checks_its_health(image: str) -> None:
    (healthcheck,) = only(dockerfile(image), "HEALTHCHECK")
    probe = " ".join(healthcheck.exec_form())
    if image == "sandbox":
        (cmd,) = only(dockerfile(image), "CMD")
        port = cmd.exec_form()[cmd.exec_form().index("--port") + 1]
        assert f"http://127.0.0.1:{port}/_sandbox/stats" in probe
    elif image == "sbdouble":
        (cmd,) = only(dockerfile(image), "CMD")
        port = cmd.exec_form()[cmd.exec_form().index("--port") + 1]
        assert f"('127.0.0.1', {port})" in probe
    else:
        assert "TIBRIDGE_HEALTH_PORT" in probe
        assert "/healthz" in probe
        assert [ins.arguments for ins in only(dockerfile(image), "EXPOSE")] == ["8080"]


def test_images_copy_only_what_exists() -> None:
    for source in _copy_sources("scorer"):
        assert (REPO / source).exists(), f"the Dockerfiles COPY {source}, which does not exist"
    for member in _members():
        assert f"{member}/pyproject.toml" in _copy_sources("scorer"), f"workspace member {member} is not built"
        assert f"{member}/src" in _copy_sources("scorer")


@pytest.mark.parametrize("image", IMAGES)
def test_images_run_as_an_unprivileged_numeric_user(image: str) -> None:
    (user,) = only(dockerfile(image), "USER")
    uid, _, gid = user.arguments.partition(":")
    assert re.fullmatch(r"[1-9][0-9]*", uid), "USER must be a numeric uid other than root's"
    assert re.fullmatch(r"[1-9][0-9]*", gid), "USER must name a numeric gid other than root's"


@pytest.mark.parametrize("image", IMAGES)
def test_images_carry_no_secrets(image: str) -> None:
    for instruction in [*only(dockerfile(image), "ENV"), *only(dockerfile(image), "ARG")]:
        for name in [word.partition("=")[0] for word in instruction.words()]:
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN|CONNECTION_STRING", name), f"{image}: {name} in the image"


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern that matches the path (or a parent of it) decides."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").removeprefix("**/")
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), glob) for i in range(len(parts))) or fnmatch.fnmatch(
            parts[-1], glob
        ):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_local_state_out_and_what_images_copy_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".tools", ".env", "*.env"} <= set(patterns)
    for kept_out in (".venv/bin/python", ".env", "docker-compose.env", "tests/unit/deploy/manifests.py", "k8s/base"):
        assert _ignored(kept_out, patterns), f".dockerignore lets {kept_out} into the build context"
    for source in _copy_sources("scorer"):
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which the images COPY"
