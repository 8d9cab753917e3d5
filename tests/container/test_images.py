"""What is inside each built image: exactly its distribution's locked environment, run unprivileged."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from packaging.markers import Marker

from tests.container.compose import REPO
from tests.container.engine import IMAGE_NAMES, Engine, image

UV = REPO / ".tools" / "uv" / "bin" / "uv"
IMAGE_UID = "10001"
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _workspace_member_name(path: str) -> str:
    text = (REPO / path / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^name = "([^"]+)"', text, re.MULTILINE)
    assert match is not None, f"{path}/pyproject.toml names no project"
    return match[1]


def locked_distributions(name: str) -> set[str]:
    """What the lock file says the image's environment holds: its distribution and every locked dependency
    that applies on Linux CPython 3.11 (the double: the root project's `sbdouble` group)."""
    selection = ["--only-group", "sbdouble"] if name == "sbdouble" else ["--no-dev", "--package", f"tibridge-{name}"]
    exported = subprocess.run(
        [str(UV), "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate", "--no-editable", *selection],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names: set[str] = set()
    for line in exported.splitlines():
        requirement, _, marker = line.partition(";")
        if not requirement.strip() or (marker and not Marker(marker.strip()).evaluate()):
            continue
        requirement = requirement.strip()
        names.add(_workspace_member_name(requirement) if requirement.startswith("./") else requirement.split("==")[0])
    return {_canonical(each) for each in names}


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_image_holds_exactly_its_locked_distributions(engine: Engine, name: str) -> None:
    installed = json.loads(engine.run_once(image(name), "-c", LIST_DISTRIBUTIONS, entrypoint="python"))
    assert {_canonical(each) for each in installed} == locked_distributions(name)


@pytest.mark.parametrize("name", ["collector", "scorer", "publisher"])
def test_service_images_hold_no_other_service_and_no_sandbox(name: str) -> None:
    others = {f"tibridge-{other}" for other in ("collector", "scorer", "publisher", "sandbox") if other != name}
    assert not locked_distributions(name) & others


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_image_runs_unprivileged_without_build_tools(engine: Engine, name: str) -> None:
    config = engine.image_config(image(name))
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    found = engine.run_once(
        image(name), "-c", "id -u; for tool in gcc cc uv; do command -v $tool || true; done", entrypoint="sh"
    ).split()
    assert found == [IMAGE_UID], f"{name}: runs as {found[0]}, finds build tools {found[1:]}"
    # The environment itself has no installer either.
    no_pip = engine.run_once(
        image(name), "-c", "import importlib.util as u; print(u.find_spec('pip'))", entrypoint="python"
    )
    assert no_pip.strip() == "None"


@pytest.mark.parametrize("name", ["collector", "scorer", "publisher"])
def test_service_image_exposes_and_checks_its_health_port(engine: Engine, name: str) -> None:
    config = engine.image_config(image(name))
    assert "8080/tcp" in config["ExposedPorts"]
    assert "/healthz" in " ".join(engine.image_healthcheck(image(name)))
    assert config["Entrypoint"] == ["python", "-m", f"tibridge.{name}"]
