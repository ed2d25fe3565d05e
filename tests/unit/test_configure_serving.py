"""kustomize/cloud/configure_serving.py: the cluster-wide settings the Knative-mode overlays need."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "kustomize" / "cloud" / "configure_serving.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("configure_serving", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


configure = load()

# The shape KServe ships (abridged): the ingress settings are one JSON document in a key.
KSERVE_DATA = {
    "ingress": json.dumps(
        {"ingressGateway": "knative-serving/knative-ingress-gateway", "ingressDomain": "example.com"}
    ),
    "deploy": json.dumps({"defaultDeploymentMode": "Knative"}),
}


def test_kourier_disables_the_istio_virtual_host_and_keeps_the_rest() -> None:
    patch = configure.kserve_ingress_patch(KSERVE_DATA, "kourier")
    assert set(patch["data"]) == {"ingress"}, "only the ingress key is patched"
    ingress = json.loads(patch["data"]["ingress"])
    assert ingress["disableIstioVirtualHost"] is True
    assert ingress["ingressDomain"] == "example.com"
    assert (
        json.loads(configure.kserve_ingress_patch(KSERVE_DATA, "istio")["data"]["ingress"])[
            "disableIstioVirtualHost"
        ]
        is False
    )


def test_an_unknown_networking_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="kourier or istio"):
        configure.kserve_ingress_patch(KSERVE_DATA, "contour")


def test_private_registries_join_the_skipped_list_once() -> None:
    registry = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
    fresh = configure.tag_resolution_patch({}, [registry])["data"][configure.SKIP_TAG_RESOLUTION]
    assert fresh.split(",") == [*configure.DEFAULT_SKIPPED, registry], "Knative's defaults are kept"
    again = configure.tag_resolution_patch({configure.SKIP_TAG_RESOLUTION: fresh}, [registry])
    assert again["data"][configure.SKIP_TAG_RESOLUTION] == fresh


def test_dry_run_prints_the_patches(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        configure, "_config_map", lambda namespace, name: dict(KSERVE_DATA) if namespace == "kserve" else {}
    )
    assert (
        configure.main(["--networking", "kourier", "--skip-tag-resolution", "registry.example", "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "patch configmap inferenceservice-config" in out
    assert "registry.example" in out
