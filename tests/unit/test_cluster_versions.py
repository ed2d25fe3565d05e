"""The versions kind-up.sh installs agree with each other, with the vendored schemas and with
the locked SDKs the images are built on.

Knative's controllers run ``knative.dev/pkg``'s version check at start-up and exit ("Version
check failed") on a Kubernetes older than that release's minimum, so a kind node below the
floor leaves ``wait_deployments knative-eventing`` to time out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIND_UP = ROOT / "kustomize" / "kind" / "kind-up.sh"
VALIDATE = ROOT / "kustomize" / "validate.sh"
LOCK = ROOT / "requirements.lock"

# Minimum Kubernetes of each Knative release: `defaultMinimumVersion` in knative.dev/pkg's
# version/version.go at the pkg commit that release's go.mod pins (knative.dev/eventing
# v0.44.0-v0.48.0 are knative-v1.17-v1.21). 1.23 was measured: its controllers refuse 1.33.
KNATIVE_MINIMUM_KUBERNETES: dict[str, tuple[int, int]] = {
    "1.17": (1, 30),
    "1.18": (1, 31),
    "1.19": (1, 32),
    "1.20": (1, 32),
    "1.21": (1, 33),
    "1.23": (1, 34),
}


def pinned(name: str, script: Path = KIND_UP) -> str:
    found = re.search(rf"^{name}=(\S+)$", script.read_text(), re.MULTILINE)
    assert found, f"{script.name} pins no {name}"
    return found.group(1)


def minor(version: str) -> tuple[int, int]:
    found = re.search(r"(\d+)\.(\d+)", version)
    assert found, version
    return int(found.group(1)), int(found.group(2))


def kind_node_kubernetes() -> tuple[int, int]:
    image = pinned("KIND_NODE_IMAGE")
    found = re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}", image)
    assert found, f"the kind node image must be a version tag pinned by digest: {image}"
    return minor(found.group(1))


@pytest.mark.parametrize("variable", ["KNATIVE_EVENTING_VERSION", "KNATIVE_KAFKA_VERSION"])
def test_the_kind_node_meets_knatives_minimum_kubernetes(variable: str) -> None:
    release = pinned(variable)
    found = re.fullmatch(r"knative-v(\d+\.\d+)\.\d+", release)
    assert found, f"{variable}={release} is not a knative-vX.Y.Z release"
    known = KNATIVE_MINIMUM_KUBERNETES.get(found.group(1))
    assert known, f"{release}: add its minimum Kubernetes (knative.dev/pkg version.go) to the table"
    node = kind_node_kubernetes()
    assert node >= known, (
        f"{release} needs Kubernetes {known[0]}.{known[1]}, the kind node runs {node[0]}.{node[1]}"
    )


def test_validation_uses_the_kind_nodes_kubernetes() -> None:
    assert minor(pinned("KUBERNETES_VERSION", VALIDATE)) == kind_node_kubernetes()
    schemas = [p.name for p in (ROOT / "kustomize" / "schemas" / "core").iterdir()]
    assert schemas == [f"v{pinned('KUBERNETES_VERSION', VALIDATE)}-standalone-strict"]


def test_the_cluster_runs_the_kserve_release_of_the_images_sdk() -> None:
    locked = re.search(r"^kserve==([^\s\\]+)", LOCK.read_text(), re.MULTILINE)
    assert locked, "requirements.lock pins no kserve"
    assert minor(pinned("KSERVE_VERSION")) == minor(locked.group(1)), (
        f"kind-up.sh installs KServe {pinned('KSERVE_VERSION')}, the images use the kserve {locked.group(1)} SDK"
    )
