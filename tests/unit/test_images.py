"""Offline checks of the container images (docker/) and the lock files they install from.

Every image is a named target of the one multi-stage ``docker/Dockerfile``: a shared builder
that installs ``requirements.lock`` (the runtime dependencies only), a shared non-root runtime
stage, then one small stage per component. ``requirements-dev.lock`` adds the dev extra for
developers and CI and must agree with the runtime lock on every package they share.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
BUILD_IMAGES = ROOT / "docker" / "build-images.sh"
KUSTOMIZE = ROOT / "kustomize"
RUNTIME_LOCK = ROOT / "requirements.lock"
PIPELINE_LOCK = ROOT / "requirements-pipeline.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

SHARED_STAGES = ("builder", "pipeline-builder", "base", "runtime", "pipeline-runtime")
# Only the training image needs these (kfp compiles and runs the pipeline, matplotlib draws
# its report); the serving and worker images must not carry them.
TRAINING_ONLY = ("kfp", "kfp-kubernetes", "matplotlib")
PIPELINE_TARGETS = ("pipeline",)
# What production images must never carry (the dev extra adds more: stubs, pytest plugins).
DEV_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "duckdb")


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: tuple[str, ...]  # one per instruction, continuation lines joined


@cache
def stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: dict[str, Stage] = {}
    current: tuple[str, str] | None = None
    lines: list[str] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM (\S+) AS (\S+)", line, flags=re.IGNORECASE)
        if match:
            if current is not None:
                found[current[0]] = Stage(current[0], current[1], tuple(lines))
            current, lines = (match.group(2), match.group(1)), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        found[current[0]] = Stage(current[0], current[1], tuple(lines))
    return found


def build_script_components() -> list[str]:
    """The default component list of docker/build-images.sh."""
    match = re.search(r'\$\{COMPONENTS:-([^}"]+)\}', BUILD_IMAGES.read_text())
    assert match, "docker/build-images.sh has no default COMPONENTS list"
    return match.group(1).split()


def kustomize_images() -> list[str]:
    """Every fraud-platform/<component> image the manifests refer to (overlays rename them).

    kustomize/tests holds a deliberately invalid fixture, not a deployable manifest."""
    names: set[str] = set()
    for path in KUSTOMIZE.rglob("*.yaml"):
        if (KUSTOMIZE / "tests") in path.parents:
            continue
        names.update(re.findall(r"fraud-platform/([a-z0-9][a-z0-9-]*)", path.read_text()))
    return sorted(names)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pins(lock: Path) -> dict[str, str]:
    """package -> pinned version of a `uv pip compile` output."""
    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            found[normalise(match.group(1))] = match.group(2)
    assert found, f"no pinned package in {lock.name}"
    return found


@cache
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dev_extra() -> list[str]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    requirements = project["optional-dependencies"]["dev"]
    names = [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r) for r in requirements]
    return sorted({normalise(m.group(0)) for m in names if m})


def package_folders() -> list[str]:
    """The source folders the project's packages are found in (pyproject's setuptools `where`)."""
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    find = tool["setuptools"]["packages"]["find"]
    folders = [w for w in find["where"] if w != "."]
    # Packages at the root ("."): the folders matching the include patterns.
    folders += [
        d.name
        for d in sorted(ROOT.iterdir())
        if (d / "__init__.py").is_file() and any(fnmatch(d.name, p) for p in find["include"])
    ]
    return folders


# ---------------------------------------------------------------------------- Dockerfile


@pytest.mark.parametrize("component", build_script_components())
def test_every_built_component_has_a_target(component: str) -> None:
    assert component in stages(), f"docker/Dockerfile has no `FROM runtime AS {component}`"
    assert stages()[component].base == ("pipeline-runtime" if component in PIPELINE_TARGETS else "runtime")


@pytest.mark.parametrize("component", kustomize_images())
def test_every_deployed_image_has_a_target(component: str) -> None:
    assert component in stages(), (
        f"kustomize/ deploys fraud-platform/{component}, docker/Dockerfile has no target for it"
    )
    assert component in build_script_components(), f"docker/build-images.sh does not build {component}"


def test_components_share_the_builder_and_runtime_stages() -> None:
    components = [s for s in stages().values() if s.name not in SHARED_STAGES]
    assert components, "docker/Dockerfile has no component target"
    for stage in components:
        assert stage.base in ("runtime", "pipeline-runtime"), (
            f"target {stage.name} is not built on a runtime stage"
        )
        assert any(i.startswith(("ENTRYPOINT ", "CMD ")) for i in stage.instructions), stage.name
        # Only labels, ports and the entry point differ; no component installs anything.
        kinds = {i.split(" ", 1)[0].upper() for i in stage.instructions}
        assert kinds <= {"LABEL", "EXPOSE", "ENTRYPOINT", "CMD"}, f"{stage.name}: {sorted(kinds)}"
    assert "USER 10001:10001" in stages()["base"].instructions, "the runtime stages must run as uid 10001"
    assert stages()["runtime"].base == stages()["pipeline-runtime"].base == "base"
    assert any(i.startswith("COPY --from=builder /opt/venv ") for i in stages()["runtime"].instructions)
    pipeline = stages()["pipeline-runtime"].instructions
    assert any(i.startswith("COPY --from=pipeline-builder /opt/venv ") for i in pipeline)


def test_the_base_image_is_pinned_by_digest() -> None:
    text = DOCKERFILE.read_text()
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert arg, "docker/Dockerfile sets no PYTHON_IMAGE"
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", arg.group(1)), (
        f"not pinned by digest: {arg.group(1)}"
    )
    for stage in stages().values():
        assert stage.base == "${PYTHON_IMAGE}" or stage.base in stages(), (
            f"{stage.name} is built on {stage.base}"
        )


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, PIPELINE_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_every_locked_package_carries_its_hashes(lock: Path) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    pinned = [e for e in entries if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==", e)]
    assert pinned, f"no pinned package in {lock.name}"
    unhashed = [e.split()[0] for e in pinned if "--hash=sha256:" not in e]
    assert not unhashed, f"{lock.name}: pins without hashes: {unhashed[:5]}"


def test_images_install_with_hashes_only() -> None:
    installs = [
        i for stage in stages().values() for i in stage.instructions if "pip install" in i and " -r " in i
    ]
    assert len(installs) == 2, installs  # the runtime lock, then the pipeline lock
    assert all("--require-hashes" in i for i in installs), installs


@pytest.mark.parametrize("package", TRAINING_ONLY)
def test_training_packages_are_in_the_pipeline_image_only(package: str) -> None:
    assert package not in pins(RUNTIME_LOCK), f"{package} would ship in every serving and worker image"
    assert package in pins(PIPELINE_LOCK)
    assert package in pins(DEV_LOCK)


def test_builder_installs_the_runtime_lock_only() -> None:
    builder = stages()["builder"].instructions
    assert "COPY requirements.lock ./" in builder
    installs = [i for i in builder if i.startswith("RUN ") and "pip install" in i]
    assert any(re.search(r"-r requirements\.lock\b", i) for i in installs), installs
    everything = [i for stage in stages().values() for i in stage.instructions]
    assert not [i for i in everything if "requirements-dev" in i], "no image may see the dev lock"
    allowed = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert "!requirements.lock" in allowed
    assert not any("requirements-dev" in line for line in allowed if line.startswith("!"))


@pytest.mark.parametrize("folder", package_folders())
def test_builder_copies_every_package_folder(folder: str) -> None:
    assert f"COPY {folder} ./{folder}" in stages()["builder"].instructions, (
        f"the builder leaves out {folder}/"
    )
    allowed = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert f"!{folder}" in allowed, f"docker/Dockerfile.dockerignore leaves {folder}/ out of the context"


# ---------------------------------------------------------------------------- lock files


@pytest.mark.parametrize("package", sorted(set(DEV_TOOLS) | set(dev_extra())))
def test_dev_packages_are_in_the_dev_lock_only(package: str) -> None:
    assert package not in pins(RUNTIME_LOCK), f"{package} is in requirements.lock (the images)"
    assert package in pins(DEV_LOCK), f"{package} is missing from requirements-dev.lock"


@pytest.mark.parametrize(
    ("narrow", "wide"), [(RUNTIME_LOCK, PIPELINE_LOCK), (PIPELINE_LOCK, DEV_LOCK)], ids=["pipeline", "dev"]
)
def test_each_lock_pins_the_narrower_locks_packages_at_the_same_version(narrow: Path, wide: Path) -> None:
    runtime, dev = pins(narrow), pins(wide)
    missing = sorted(set(runtime) - set(dev))
    assert not missing, f"in {narrow.name} but not in {wide.name}: {missing}"
    differ = [
        f"{name}: {runtime[name]} vs {dev[name]}" for name in sorted(runtime) if runtime[name] != dev[name]
    ]
    assert not differ, f"{narrow.name} vs {wide.name}:\n" + "\n".join(differ)
