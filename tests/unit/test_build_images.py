"""docker/build-images.sh, run with a recording stand-in for the docker CLI (no Docker engine
here) and the real pinned kustomize: every target builds, and PUSH + OVERLAY pin each pushed
image in the overlay by its registry digest (Knative resolves tags with its own registry
credentials, which private registries refuse; a digest needs no resolution)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_manifests import VALIDATE, _run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "build-images.sh"
PREFIX = "111122223333.dkr.ecr.us-east-1.amazonaws.com/fraud-platform"

# Records each call; `inspect` answers with a digest made from the image name, as a registry
# would after `push`.
DOCKER_STAND_IN = """#!/usr/bin/env bash
echo "$*" >> "$DOCKER_CALLS"
if [[ "$1" == inspect ]]; then
  image="${@: -1}"
  repo="${image%:*}"
  echo "$repo@sha256:$(printf %s "$image" | sha256sum | cut -c1-64)"
fi
"""


def digest_of(image: str) -> str:
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


@pytest.fixture
def docker_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(DOCKER_STAND_IN)
    docker.chmod(0o755)
    proc = _run(VALIDATE, "tools")  # installs the pinned kustomize when it is missing
    assert proc.returncode == 0, proc.stderr
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DOCKER_CALLS=str(tmp_path / "calls"))


def run(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env={**env, **extra}, capture_output=True, text=True, timeout=120, check=False
    )


def test_every_component_target_is_built(docker_path: dict[str, str], tmp_path: Path) -> None:
    proc = run(docker_path, "0.2.0")
    assert proc.returncode == 0, proc.stderr
    builds = [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("build ")]
    targets = {line.split("--target ", 1)[1].split()[0] for line in builds}
    assert {"transformer", "predictor", "pipeline", "feast"} <= targets
    assert not [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("push ")]


def test_pushed_images_are_pinned_in_the_overlay_by_digest(
    docker_path: dict[str, str], tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(ROOT / "kustomize" / "overlays" / "eks" / "kustomization.yaml", overlay)
    proc = run(
        docker_path,
        "0.2.0",
        PUSH="1",
        OVERLAY=str(overlay),
        IMAGE_PREFIX=PREFIX,
        COMPONENTS="transformer pipeline",
    )
    assert proc.returncode == 0, proc.stderr
    images = {i["name"]: i for i in yaml.safe_load((overlay / "kustomization.yaml").read_text())["images"]}
    for component in ("transformer", "pipeline"):
        entry = images[f"fraud-platform/{component}"]
        assert entry["newName"] == f"{PREFIX}/{component}"
        assert entry["digest"] == digest_of(f"{PREFIX}/{component}:0.2.0")
        assert "newTag" not in entry, "a tag beside the digest would be resolved again"
    assert images["fraud-platform/predictor"].get("newTag") == "0.1.0", "images not built are left alone"
    assert "digest" not in images["fraud-platform/predictor"]


def test_an_overlay_without_a_push_is_refused(docker_path: dict[str, str], tmp_path: Path) -> None:
    proc = run(docker_path, "0.2.0", OVERLAY=str(tmp_path))
    assert proc.returncode == 2
    assert "PUSH=1" in proc.stderr
