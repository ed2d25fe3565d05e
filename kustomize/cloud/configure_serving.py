#!/usr/bin/env python3
"""Cluster-wide serving settings the cloud overlays need, applied once after installing KServe
and Knative Serving (they live in the operators' namespaces, outside what `kubectl apply -k`
of an overlay may own):

    python3 kustomize/cloud/configure_serving.py --networking kourier \\
        [--skip-tag-resolution 111122223333.dkr.ecr.us-east-1.amazonaws.com] [--dry-run]

* ``--networking kourier``: KServe's ``inferenceservice-config`` ``ingress`` gets
  ``disableIstioVirtualHost: true``. Without it KServe still creates an Istio
  VirtualService for a Knative-mode InferenceService; with no Istio the InferenceService
  never gets an address, and the KafkaSource's sink never resolves. ``istio`` sets it false.
* ``--skip-tag-resolution REGISTRY`` (repeatable): adds the registry to Knative Serving's
  ``config-deployment`` ``registries-skipping-tag-resolving``, for images named by tag in a
  private registry that Knative's controller cannot read. Not needed when the overlay names
  images by digest (``PUSH=1 OVERLAY=... docker/build-images.sh``).

Needs kubectl with access to the cluster; stdlib only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

KSERVE_CONFIG = ("kserve", "inferenceservice-config")
KNATIVE_DEPLOYMENT_CONFIG = ("knative-serving", "config-deployment")
SKIP_TAG_RESOLUTION = "registries-skipping-tag-resolving"
DEFAULT_SKIPPED = ("kind.local", "ko.local", "dev.local")  # Knative's own default


def kserve_ingress_patch(data: dict[str, str], networking: str) -> dict[str, Any]:
    """Merge patch for ``inferenceservice-config``: the ``ingress`` JSON with
    ``disableIstioVirtualHost`` set for the networking layer, every other key kept."""
    if networking not in ("kourier", "istio"):
        raise ValueError(f"networking must be kourier or istio, not {networking!r}")
    ingress = json.loads(data.get("ingress") or "{}")
    ingress["disableIstioVirtualHost"] = networking != "istio"
    return {"data": {"ingress": json.dumps(ingress, indent=2)}}


def tag_resolution_patch(data: dict[str, str], registries: list[str]) -> dict[str, Any]:
    """Merge patch for ``config-deployment``: the registries added to those already skipped."""
    current = data.get(SKIP_TAG_RESOLUTION)
    skipped = [r.strip() for r in (current.split(",") if current else DEFAULT_SKIPPED) if r.strip()]
    for registry in registries:
        if registry not in skipped:
            skipped.append(registry)
    return {"data": {SKIP_TAG_RESOLUTION: ",".join(skipped)}}


def _config_map(namespace: str, name: str) -> dict[str, str]:
    out = subprocess.run(
        ["kubectl", "-n", namespace, "get", "configmap", name, "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, str] = json.loads(out).get("data") or {}
    return data


def _patch(namespace: str, name: str, patch: dict[str, Any], dry_run: bool) -> None:
    body = json.dumps(patch)
    if dry_run:
        print(f"kubectl -n {namespace} patch configmap {name} --type merge --patch '{body}'")
        return
    subprocess.run(
        ["kubectl", "-n", namespace, "patch", "configmap", name, "--type", "merge", "--patch", body],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networking", choices=["kourier", "istio"], required=True)
    parser.add_argument("--skip-tag-resolution", action="append", default=[], metavar="REGISTRY")
    parser.add_argument("--dry-run", action="store_true", help="print the kubectl patches instead")
    args = parser.parse_args(argv)
    try:
        _patch(
            *KSERVE_CONFIG, kserve_ingress_patch(_config_map(*KSERVE_CONFIG), args.networking), args.dry_run
        )
        if args.skip_tag_resolution:
            current = _config_map(*KNATIVE_DEPLOYMENT_CONFIG)
            patch = tag_resolution_patch(current, args.skip_tag_resolution)
            _patch(*KNATIVE_DEPLOYMENT_CONFIG, patch, args.dry_run)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"configure_serving: {exc}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(
            "restart KServe's controller to apply: kubectl -n kserve rollout restart deployment kserve-controller-manager"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
