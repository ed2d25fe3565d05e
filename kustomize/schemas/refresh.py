#!/usr/bin/env python3
"""Regenerate the vendored JSON schemas in kustomize/schemas/ from upstream (needs network).

    .venv/bin/python kustomize/schemas/refresh.py [--kubernetes-version 1.34.0] [--out DIR] [--only core|crds]

(`make k8s-schemas` runs it.) Never part of `make test`: validation uses the committed files.

Built-in kinds come from the PyPI wheel ``kubernetes-validate`` (fetched with ``pip download``,
checked against its pinned sha256): its ``v<K8S>-local-strict`` files point into
``_definitions.json`` with ``$ref``; every ``$ref`` is inlined recursively (keywords written
beside it kept) and the top-level ``$id`` dropped, so each file is self-contained.

Custom resources come from their upstream CRD YAML: ``schema.openAPIV3Schema`` of each version,
with ``additionalProperties: false`` added to object schemas that list ``properties``
(see ``convert_crd`` for the two styles used).

Then every file loses its ``description`` and ``x-kubernetes-*`` keywords (never a property
that happens to have such a name), each subschema that is repeated within a file is written
once under ``$defs`` (``definitions`` in the draft-4 CRD files) and referenced with a local
``$ref`` (see ``share_subschemas``), and the file is written as compact JSON (``serialize``).
Only the kinds listed below are kept: the ones the manifests use. Nothing is changed unless
every download succeeds; ``--only core`` or ``--only crds`` refreshes one part.

Stdlib only, plus PyYAML for the CRDs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

# ------------------------------------------------------------------ pinned data (the one place)

KUBERNETES_VERSION = "1.34.0"  # keep equal to KUBERNETES_VERSION in kustomize/validate.sh

# PyPI wheel with the Kubernetes JSON schemas: version and sha256 of
# kubernetes_validate-<version>-py3-none-any.whl.
KUBERNETES_VALIDATE_VERSION = "1.37.0"
KUBERNETES_VALIDATE_SHA256 = "85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9"

# Built-in kinds the manifests use: (apiVersion, kind).
CORE_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "Namespace"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("storage.k8s.io/v1", "StorageClass"),
)


class CrdSource(NamedTuple):
    url: str  # the upstream CRD YAML (one or more documents)
    versions: tuple[str, ...]  # the versions of its kind to keep
    style: str  # "datreeio" or "strict", see convert_crd


KSERVE = "https://raw.githubusercontent.com/kserve/kserve/v0.16.0/config/crd/full"
STRIMZI = "https://raw.githubusercontent.com/strimzi/strimzi-kafka-operator/0.49.1/packaging/install/cluster-operator"
PROMETHEUS_OPERATOR = (
    "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.89.0"
    "/example/prometheus-operator-crd"
)
KAFKA_BROKER = (
    "https://raw.githubusercontent.com/knative-extensions/eventing-kafka-broker/knative-v1.23.0"
    "/control-plane/config/eventing-kafka-broker"
)

# Custom resources the manifests use.
CRD_SOURCES: tuple[CrdSource, ...] = (
    CrdSource(f"{KSERVE}/serving.kserve.io_inferenceservices.yaml", ("v1beta1",), "datreeio"),
    CrdSource(f"{KSERVE}/serving.kserve.io_servingruntimes.yaml", ("v1alpha1",), "datreeio"),
    CrdSource(f"{STRIMZI}/040-Crd-kafka.yaml", ("v1",), "datreeio"),
    CrdSource(f"{STRIMZI}/043-Crd-kafkatopic.yaml", ("v1",), "datreeio"),
    CrdSource(f"{STRIMZI}/044-Crd-kafkauser.yaml", ("v1",), "datreeio"),
    CrdSource(f"{STRIMZI}/045-Crd-kafkanodepool.yaml", ("v1",), "datreeio"),
    CrdSource(f"{PROMETHEUS_OPERATOR}/monitoring.coreos.com_podmonitors.yaml", ("v1",), "datreeio"),
    CrdSource(f"{PROMETHEUS_OPERATOR}/monitoring.coreos.com_servicemonitors.yaml", ("v1",), "datreeio"),
    CrdSource(f"{PROMETHEUS_OPERATOR}/monitoring.coreos.com_prometheusrules.yaml", ("v1",), "datreeio"),
    CrdSource(f"{KAFKA_BROKER}/100-source/100-kafka-source.yaml", ("v1beta1",), "strict"),
    CrdSource(f"{KAFKA_BROKER}/100-sink/100-kafka-sink.yaml", ("v1alpha1",), "strict"),
)

# What the API server adds to every custom resource when a CRD does not list it.
IMPLICIT_ROOT_PROPERTIES: dict[str, Any] = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}

TIMEOUT_S = 60

Schema = dict[str, Any]

# ------------------------------------------------------------------ walking a JSON schema

# Keywords whose value is a schema, a list of schemas, or a map from names to schemas
# (drafts 4 to 2020-12). Everything else (enum, default, example, x-kubernetes-*, ...) is data.
_ONE_SCHEMA = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",  # a schema, or (drafts 4-2019) a list of schemas
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"})

# Where a subschema sits in its parent: ("items",), ("anyOf", "0"), ("properties", "spec"), ...
Step = tuple[str, ...]


def map_subschemas_at(schema: Schema, fn: Callable[[Step, Any], Any]) -> Schema:
    """A copy of ``schema`` with ``fn(step, subschema)`` applied to each of its direct subschemas."""
    out: Schema = {}
    for key, value in schema.items():
        if key in _ONE_SCHEMA:
            if isinstance(value, list):
                value = [fn((key, str(i)), v) for i, v in enumerate(value)]
            else:
                value = fn((key,), value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [fn((key, str(i)), v) for i, v in enumerate(value)]
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: fn((key, name), v) for name, v in value.items()}
        elif key == "dependencies" and isinstance(value, dict):  # draft 4: schema or list of names
            value = {name: fn((key, name), v) if isinstance(v, dict) else v for name, v in value.items()}
        out[key] = value
    return out


def map_subschemas(schema: Schema, fn: Callable[[Any], Any]) -> Schema:
    """A copy of ``schema`` with ``fn`` applied to each of its direct subschemas."""
    return map_subschemas_at(schema, lambda _step, sub: fn(sub))


def subschemas(schema: Schema) -> list[tuple[Step, Any]]:
    """The direct subschemas of ``schema`` (objects and booleans), with their steps, in order."""
    found: list[tuple[Step, Any]] = []
    map_subschemas_at(schema, lambda step, sub: found.append((step, sub)))
    return found


# ------------------------------------------------------------------ the files' form

# Annotation keywords removed from every schema: kubeconform (and JSON Schema) ignores them.
# x-kubernetes-* keywords are Kubernetes' API-server extensions (list types, CEL rules, ...);
# the CRD conversion reads x-kubernetes-preserve-unknown-fields before they are dropped.
_ANNOTATION = "description"
_EXTENSION_PREFIX = "x-kubernetes-"

# A subschema whose compact JSON has at least this many characters and that occurs at least
# twice in a file is written once, under $defs (or definitions), and referenced with $ref.
SHARE_MIN_SIZE = 64


def strip_annotations(schema: Any) -> Any:
    """The schema without ``description`` and ``x-kubernetes-*`` keywords; validation is unchanged.

    Only keywords are removed: a property named ``description`` (a key of ``properties``)
    stays, and so does anything inside data such as ``default`` or ``enum``.
    """
    if not isinstance(schema, dict):
        return schema
    kept = {k: v for k, v in schema.items() if k != _ANNOTATION and not k.startswith(_EXTENSION_PREFIX)}
    return map_subschemas(kept, strip_annotations)


def defs_keyword(schema: Schema) -> str:
    """Where shared subschemas go: ``$defs`` from draft 2019-09 on, else ``definitions``
    (a file without ``$schema``, as every CRD file here, is read by kubeconform as draft 4)."""
    dialect = str(schema.get("$schema", ""))
    return "$defs" if "2019-09" in dialect or "2020-12" in dialect else "definitions"


def _compact(node: Any) -> str:
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False)


def _def_name(path: list[Step]) -> str:
    """A readable name from where a subschema first occurs: the nearest property name, then
    the keywords below it (``containers.items``, ``env``, ``anyOf.1``)."""
    parts: list[str] = []
    for step in reversed(path):
        if step[0] in ("properties", "patternProperties", "dependencies", "dependentSchemas"):
            parts.append(step[1])
            break
        parts.append(".".join(step))
    name = ".".join(reversed(parts)) or "unnamed"
    # Only characters that need no escaping in a JSON pointer or a URI fragment.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _check_unshared(schema: Schema) -> None:
    for keyword in ("$ref", "$id", "id", "$defs", "definitions"):
        if keyword in schema:
            raise ValueError(f"cannot share the subschemas of a schema that uses {keyword!r}")
    for _, sub in subschemas(schema):
        if isinstance(sub, dict):
            _check_unshared(sub)


def _occurrences(schema: Schema, shared: set[str], key: Callable[[Schema], str]) -> Counter[str]:
    """How often each subschema occurs when each ``shared`` one is entered only once."""
    counts: Counter[str] = Counter()
    entered: set[str] = set()

    def walk(node: Schema) -> None:
        for _, sub in subschemas(node):
            if isinstance(sub, dict):
                k = key(sub)
                counts[k] += 1
                if k in shared:
                    if k in entered:
                        continue
                    entered.add(k)
                walk(sub)

    walk(schema)
    return counts


def share_subschemas(schema: Schema, min_size: int = SHARE_MIN_SIZE) -> Schema:
    """The same schema with each repeated subschema written once.

    Every subschema (never the root) whose compact JSON has at least ``min_size`` characters
    and that occurs at least twice becomes an entry of ``$defs`` (``definitions`` in draft 4,
    see ``defs_keyword``) at the root, and each occurrence is replaced by exactly
    ``{"$ref": "#/$defs/NAME"}``: no keyword beside ``$ref`` (draft 4 would ignore it).
    Occurrences inside a shared subschema count once, as it is written once. Subschemas are
    equal when their JSON is, key order included, so ``expand_shared`` gives back the input.
    Names come from the first occurrence (``_def_name``, then ``-2``, ``-3``, ...), entries
    are in order of first occurrence: the output depends on the input only. A subschema cannot
    contain itself, so no ``$ref`` is recursive.
    """
    keyword = defs_keyword(schema)
    keys: dict[int, str] = {}  # id(subschema) -> its compact JSON

    def key(node: Schema) -> str:
        found = keys.get(id(node))
        if found is None:
            found = keys[id(node)] = _compact(node)
        return found

    _check_unshared(schema)
    counts = _occurrences(schema, set(), key)
    shared = {k for k, n in counts.items() if n >= 2 and len(k) >= min_size}

    # Count again, entering each shared subschema once, until every shared one occurs twice.
    while True:
        still = {k for k, n in _occurrences(schema, shared, key).items() if k in shared and n >= 2}
        if still == shared:
            break
        shared = still

    names: dict[str, str] = {}  # compact JSON -> name
    defs: dict[str, Any] = {}

    def rewrite(node: Schema, path: list[Step]) -> Schema:
        def visit(step: Step, sub: Any) -> Any:
            if not isinstance(sub, dict):
                return sub
            k = key(sub)
            if k not in shared:
                return rewrite(sub, [*path, step])
            if k not in names:
                base = name = _def_name([*path, step])
                n = 1
                while name in defs:
                    n += 1
                    name = f"{base}-{n}"
                names[k] = name
                defs[name] = None  # reserves the name and the entry's position
                defs[name] = rewrite(sub, [*path, step])
            return {"$ref": f"#/{keyword}/{names[k]}"}

        return map_subschemas_at(node, visit)

    out = rewrite(schema, [])
    if defs:
        out[keyword] = defs
    return out


def expand_shared(schema: Schema) -> Schema:
    """The inverse of ``share_subschemas``: every ``{"$ref": "#/$defs/NAME"}`` (or
    ``#/definitions/NAME``) replaced by its entry, expanded, and the entries removed."""
    keyword = defs_keyword(schema)
    defs: dict[str, Any] = schema.get(keyword) or {}

    def expand(node: Any, within: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            prefix = f"#/{keyword}/"
            name = ref[len(prefix) :] if isinstance(ref, str) and ref.startswith(prefix) else None
            if len(node) != 1 or name not in defs:
                raise ValueError(f"not a reference to a shared subschema: {node!r}")
            if name in within:
                raise ValueError(f"recursive reference: {' -> '.join([*within, name])}")
            return expand(defs[name], (*within, name))
        return map_subschemas(node, lambda sub: expand(sub, within))

    top = {k: v for k, v in schema.items() if k != keyword}
    expanded: Schema = expand(top, ())
    return expanded


def serialize(schema: Schema) -> str:
    """The text of a vendored file, from a converted schema: annotations stripped
    (``strip_annotations``), repeated subschemas shared (``share_subschemas``), compact JSON."""
    return dump(share_subschemas(strip_annotations(schema)))


def dump(schema: Schema) -> str:
    """Compact JSON, keys in upstream order, one trailing newline."""
    return _compact(schema) + "\n"


# ------------------------------------------------------------------ built-in kinds


def core_file_name(api_version: str, kind: str) -> str:
    """kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` (also the wheel's names)."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return f"{kind.lower()}-{group.split('.')[0].lower()}-{version}.json"
    return f"{kind.lower()}-{api_version}.json"


def inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every ``{"$ref": ".../_definitions.json#/$defs/NAME", ...}`` by the definition
    (itself inlined), keywords written beside the ``$ref`` winning."""
    if isinstance(node, list):
        return [inline_refs(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        _, sep, name = ref.partition("#/$defs/")
        if not sep or name not in defs:
            raise ValueError(f"unsupported $ref {ref!r}")
        siblings = {k: inline_refs(v, defs) for k, v in node.items() if k != "$ref"}
        return {**inline_refs(defs[name], defs), **siblings}
    return {k: inline_refs(v, defs) for k, v in node.items()}


def standalone_core_schema(kind_schema: Schema, defs: dict[str, Any]) -> Schema:
    """A self-contained schema from a ``-local-strict`` file of kubernetes-validate."""
    schema: Schema = inline_refs(kind_schema, defs)
    schema.pop("$id", None)
    return schema


def core_schemas(wheel: Path, kubernetes_version: str) -> dict[str, Schema]:
    """File name -> standalone schema, for every kind in CORE_KINDS."""
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{kubernetes_version}-local-strict/"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        if prefix + "_definitions.json" not in names:
            available = sorted(
                n.split("/")[2][1 : -len("-local-strict")]
                for n in names
                if n.endswith("-local-strict/_definitions.json")
            )
            raise SystemExit(
                f"refresh.py: {wheel.name} has no schemas for Kubernetes {kubernetes_version} "
                f"(it has {', '.join(available)})"
            )
        defs = json.loads(zf.read(prefix + "_definitions.json"))["$defs"]
        out = {}
        for api_version, kind in CORE_KINDS:
            name = core_file_name(api_version, kind)
            if prefix + name not in names:
                raise SystemExit(f"refresh.py: {wheel.name} has no {prefix}{name} ({api_version} {kind})")
            source = json.loads(zf.read(prefix + name))
            out[name] = standalone_core_schema(source, defs)
    return out


def download_wheel(dest: Path) -> Path:
    spec = f"kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", spec]
    proc = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True, check=False)
    wheels = list(dest.glob("kubernetes_validate-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise SystemExit(
            f"refresh.py: `pip download {spec}` failed (needs access to PyPI); nothing was changed.\n"
            + (proc.stderr or proc.stdout).strip()[-2000:]
        )
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != KUBERNETES_VALIDATE_SHA256:
        raise SystemExit(
            f"refresh.py: {wheels[0].name} has sha256 {digest}, expected {KUBERNETES_VALIDATE_SHA256} "
            "(update KUBERNETES_VALIDATE_SHA256 together with KUBERNETES_VALIDATE_VERSION)"
        )
    return wheels[0]


# ------------------------------------------------------------------ custom resources


def _is_object_with_properties(node: Schema) -> bool:
    kind = node.get("type")
    return "properties" in node and (kind == "object" or (isinstance(kind, list) and "object" in kind))


def _close_datreeio(data: Any, skip: bool = False) -> None:
    """datreeio/CRDs-catalog's ``additional_properties``, in place: it walks dict values only
    (not lists) and closes every object schema with properties, except the root."""
    if isinstance(data, dict):
        if _is_object_with_properties(data) and not skip and "additionalProperties" not in data:
            data["additionalProperties"] = False
        for value in data.values():
            _close_datreeio(value)


def _replace_int_or_string(data: Any) -> Any:
    """datreeio/CRDs-catalog's ``replace_int_or_string``: ``format: int-or-string`` becomes
    ``oneOf: [string, integer]``."""
    if not isinstance(data, dict):
        return data
    new = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if value.get("format") == "int-or-string":
                value = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
            else:
                value = _replace_int_or_string(value)
        elif isinstance(value, list):
            value = [_replace_int_or_string(x) for x in value]
        new[key] = value
    return new


def _close_strict(schema: Any) -> Any:
    """Close every object schema with properties, the root included, unless it sets
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields: true``."""
    if not isinstance(schema, dict):
        return schema
    out = map_subschemas(schema, _close_strict)
    if (
        _is_object_with_properties(out)
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def convert_crd(crd: dict[str, Any], style: str) -> dict[str, Schema]:
    """Version name -> JSON schema of one CustomResourceDefinition.

    ``datreeio``: the rules of datreeio/CRDs-catalog's ``Utilities/openapi2jsonschema.py``
    (object schemas with properties get ``additionalProperties: false``, the root excepted;
    ``format: int-or-string`` becomes ``oneOf``), so the files equal the catalog's.

    ``strict``: ``additionalProperties: false`` on every object schema with properties, the
    root included, that has neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields: true``; ``apiVersion``, ``kind`` and ``metadata``
    are added at the root when the CRD leaves them implicit (a strict root would otherwise
    reject every object).
    """
    if style not in ("datreeio", "strict"):
        raise ValueError(f"unknown style {style!r}")
    spec = crd["spec"]
    legacy = (spec.get("validation") or {}).get("openAPIV3Schema")
    found: dict[str, Schema] = {}
    for version in spec.get("versions") or [{"name": spec.get("version")}]:
        schema = (version.get("schema") or {}).get("openAPIV3Schema") or legacy
        if schema is None:
            continue
        schema = copy.deepcopy(schema)
        if style == "datreeio":
            _close_datreeio(schema, skip=True)
            schema = _replace_int_or_string(schema)
        else:
            properties = schema.get("properties") or {}
            missing = {k: v for k, v in IMPLICIT_ROOT_PROPERTIES.items() if k not in properties}
            if missing and "properties" in schema:
                schema["properties"] = {**copy.deepcopy(missing), **properties}
            schema = _close_strict(schema)
        found[version["name"]] = schema
    return found


def crd_file_name(crd: dict[str, Any], version: str) -> str:
    """kubeconform's ``{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json``."""
    return f"{crd['spec']['group']}/{crd['spec']['names']['kind'].lower()}_{version}.json"


def load_crds(text: str) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in a YAML stream (lists of them included)."""
    import yaml  # PyYAML: only needed for the CRDs

    class Loader(yaml.SafeLoader):
        pass

    # Scalars such as `=` (yaml/pyyaml#89), read as strings, as datreeio's script does.
    Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: str(node.value))
    crds = []
    for doc in yaml.load_all(text, Loader=Loader):
        if not isinstance(doc, dict):
            continue
        for item in [doc, *(doc.get("items") or [])]:
            if isinstance(item, dict) and item.get("kind") == "CustomResourceDefinition":
                crds.append(item)
    return crds


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise SystemExit(
            f"refresh.py: cannot download {url}: {err}\n"
            "This script needs network access (raw.githubusercontent.com and PyPI); nothing was changed."
        ) from err
    return body.decode("utf-8")


def crd_schemas(sources: Iterable[CrdSource]) -> dict[str, Schema]:
    """Relative path under crds/ -> converted schema, for every source."""
    out = {}
    for source in sources:
        crds = load_crds(fetch(source.url))
        if len(crds) != 1:
            raise SystemExit(
                f"refresh.py: expected one CustomResourceDefinition in {source.url}, found {len(crds)}"
            )
        converted = convert_crd(crds[0], source.style)
        for version in source.versions:
            if version not in converted:
                raise SystemExit(
                    f"refresh.py: {source.url} has no schema for version {version} (it has {sorted(converted)})"
                )
            out[crd_file_name(crds[0], version)] = converted[version]
    return out


# ------------------------------------------------------------------ main


def write_tree(
    out: Path, kubernetes_version: str, core: dict[str, Schema] | None, crds: dict[str, Schema] | None
) -> None:
    """Replace out/core and out/crds with the files of these schemas (``serialize``); a part
    given as None, and other files in ``out``, are left alone."""
    parts = {
        part: {f"{prefix}{rel}": serialize(schema) for rel, schema in sorted(schemas.items())}
        for part, prefix, schemas in (
            ("core", f"v{kubernetes_version}-standalone-strict/", core),
            ("crds", "", crds),
        )
        if schemas is not None
    }
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".refresh-", dir=out))
    try:
        for part, files in parts.items():
            (staging / part).mkdir()
            for rel, text in files.items():
                path = staging / part / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        for part in parts:
            shutil.rmtree(out / part, ignore_errors=True)
            (staging / part).rename(out / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--kubernetes-version",
        default=KUBERNETES_VERSION,
        help=f"Kubernetes version of the built-in schemas (default {KUBERNETES_VERSION})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write core/ and crds/ into (default: this script's folder, kustomize/schemas)",
    )
    parser.add_argument(
        "--only",
        choices=("core", "crds"),
        help="refresh only the built-in kinds (needs PyPI) or only the CRDs (needs GitHub)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out

    # Everything is fetched and converted before anything is written.
    core = crds = None
    if args.only in (None, "core"):
        with tempfile.TemporaryDirectory() as tmp:
            core = core_schemas(download_wheel(Path(tmp)), args.kubernetes_version)
    if args.only in (None, "crds"):
        crds = crd_schemas(CRD_SOURCES)
    write_tree(out, args.kubernetes_version, core, crds)

    total = sum(p.stat().st_size for part in ("core", "crds") for p in (out / part).rglob("*.json"))
    wrote = [f"{len(core)} built-in"] if core is not None else []
    wrote += [f"{len(crds)} custom resource"] if crds is not None else []
    print(f"wrote {' and '.join(wrote)} schemas to {out} (core/ and crds/: {total / 1024:.0f} KiB)")
    if core is not None and args.kubernetes_version != KUBERNETES_VERSION:
        print(f"note: set KUBERNETES_VERSION={args.kubernetes_version} in kustomize/validate.sh to use them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
