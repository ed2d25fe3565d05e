"""The JSON schemas vendored in kustomize/schemas/ (what kubeconform validates against).

They must cover every kind the manifests render, and nothing more; they must stay strict
and self-contained; and kustomize/schemas/refresh.py, which regenerates them from upstream
(not run here: it needs network), must convert CRDs, strip annotations and share repeated
subschemas without changing what validates.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator, Draft202012Validator

from tests.unit.test_manifests import ROOT, TARGETS, VALIDATE, Doc, render

SCHEMAS = ROOT / "kustomize" / "schemas"
BROKEN = "tests/broken"  # its FraudWidget must stay without a schema


def _load_refresh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("refresh_schemas", SCHEMAS / "refresh.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _load_refresh()


def kubernetes_version() -> str:
    found = re.search(r"^KUBERNETES_VERSION=(\S+)$", VALIDATE.read_text(), re.MULTILINE)
    assert found, "no KUBERNETES_VERSION in kustomize/validate.sh"
    return found.group(1)


def candidates(doc: Doc) -> list[Path]:
    """The files kubeconform tries for an object, in order (validate.sh's two templates)."""
    api_version, kind = doc["apiVersion"], doc["kind"].lower()
    group, version = api_version.split("/")[0], api_version.split("/")[-1]
    suffix = f"-{group.split('.')[0].lower()}-{version}" if "/" in api_version else f"-{version}"
    core = SCHEMAS / "core" / f"v{kubernetes_version()}-standalone-strict" / f"{kind}{suffix}.json"
    return [core, SCHEMAS / "crds" / group / f"{kind}_{version}.json"]


def resolved(doc: Doc) -> Path | None:
    return next((p for p in candidates(doc) if p.is_file()), None)


def vendored() -> list[Path]:
    return sorted(p for p in SCHEMAS.rglob("*.json") if p.parent != SCHEMAS)


# ----------------------------------------------------------------- the vendored files


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_kind_has_a_vendored_schema(target: str) -> None:
    missing = sorted({f"{d['apiVersion']} {d['kind']}" for d in render(target) if resolved(d) is None})
    assert not missing, (
        f"no schema in kustomize/schemas for {missing}: add the kind to CORE_KINDS or CRD_SOURCES "
        "in kustomize/schemas/refresh.py and run `make k8s-schemas`"
    )


def test_the_broken_fixture_is_broken_for_the_right_reasons() -> None:
    by_kind = {d["kind"]: d for d in render(BROKEN)}
    assert resolved(by_kind["Deployment"]) is not None, "the misspelled field needs the Deployment schema"
    assert resolved(by_kind["FraudWidget"]) is None, "FraudWidget must have no schema"


def test_no_vendored_schema_is_unused() -> None:
    used = {resolved(d) for target in [*TARGETS, BROKEN] for d in render(target)}
    unused = [str(p.relative_to(SCHEMAS)) for p in vendored() if p not in used]
    assert not unused, f"schemas no manifest uses (remove them from refresh.py and the folder): {unused}"


def test_core_schemas_match_validate_sh_and_refresh_py() -> None:
    version = kubernetes_version()
    assert version == refresh.KUBERNETES_VERSION
    assert [p.name for p in (SCHEMAS / "core").iterdir()] == [f"v{version}-standalone-strict"]
    listed = sorted(refresh.core_file_name(api_version, kind) for api_version, kind in refresh.CORE_KINDS)
    on_disk = sorted(p.name for p in (SCHEMAS / "core").rglob("*.json"))
    assert listed == on_disk


def refs(node: Any) -> list[dict[str, Any]]:
    """Every object with a ``$ref`` key, anywhere in a JSON document."""
    found = []
    if isinstance(node, dict):
        found += [node] if "$ref" in node else []
        for value in node.values():
            found += refs(value)
    elif isinstance(node, list):
        for value in node:
            found += refs(value)
    return found


@pytest.mark.parametrize("path", vendored(), ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_vendored_files_are_compact_strict_and_self_contained(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    schema = json.loads(text)
    # Built-in kinds are draft 2020-12; CRD files have no $schema and kubeconform reads them as
    # draft 4, where a $ref's siblings are ignored and shared subschemas go under definitions.
    core = path.is_relative_to(SCHEMAS / "core")
    assert schema.get("$schema") == ("https://json-schema.org/draft/2020-12/schema" if core else None)
    keyword = refresh.defs_keyword(schema)
    assert keyword == ("$defs" if core else "definitions")
    defs = schema.get(keyword, {})
    # Every $ref is a whole subschema `{"$ref": "#/<keyword>/NAME"}` naming an entry of this
    # file: nothing beside it, nothing outside the file.
    for node in refs(schema):
        assert list(node) == ["$ref"], node
        assert node["$ref"].startswith(f"#/{keyword}/"), node
        assert node["$ref"].removeprefix(f"#/{keyword}/") in defs, node
    # Each entry is used (twice or more, directly or from other entries), none recursively.
    uses = Counter(node["$ref"].removeprefix(f"#/{keyword}/") for node in refs(schema))
    assert all(uses[name] >= 2 for name in defs), {name: uses[name] for name in defs if uses[name] < 2}
    expanded = refresh.expand_shared(schema)  # raises on a recursive $ref
    assert not refs(expanded)
    # What refresh.py writes for that schema: annotations stripped, subschemas shared, compact.
    assert text == refresh.serialize(expanded), (
        "not in refresh.py's form (annotations stripped, repeated subschemas shared, compact JSON); "
        "regenerate it"
    )
    # Unknown fields are rejected because the files say so.
    if core:
        assert expanded["additionalProperties"] is False
    else:
        assert expanded["properties"]["spec"]["additionalProperties"] is False


# ----------------------------------------------------------------- refresh.py


CRD_YAML = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          description: A widget.
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, description: How big.}
                description: {type: string, description: A field named description.}
                labels: {type: object, additionalProperties: {type: string}}
                extra:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
                  properties:
                    known: {type: string}
                parts:
                  type: array
                  x-kubernetes-list-type: atomic
                  items:
                    type: object
                    properties:
                      name: {type: string}
                spares:
                  type: array
                  maxItems: 3
                  items:
                    type: object
                    properties:
                      name: {type: string}
            status:
              type: object
              properties:
                phase: {type: string}
"""

# The file refresh.py writes for the Widget (CRD files are draft 4: shared subschemas go
# under definitions). x-kubernetes-preserve-unknown-fields keeps `extra` open in the strict
# style and is dropped afterwards, with the other x-kubernetes-* keywords.
PART: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "additionalProperties": False,
}
SPEC: dict[str, Any] = {
    "type": "object",
    "required": ["size"],
    "properties": {
        "size": {"type": "integer"},
        "description": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "extra": {"type": "object", "properties": {"known": {"type": "string"}}},
        "parts": {"type": "array", "items": {"$ref": "#/definitions/parts.items"}},
        "spares": {"type": "array", "maxItems": 3, "items": {"$ref": "#/definitions/parts.items"}},
    },
    "additionalProperties": False,
}
STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {"phase": {"type": "string"}},
    "additionalProperties": False,
}


def widget_schema(style: str) -> Any:
    """The Widget's file, as refresh.py would write it."""
    [crd] = refresh.load_crds(CRD_YAML)
    converted = refresh.convert_crd(crd, style)
    assert list(converted) == ["v1"]
    assert refresh.crd_file_name(crd, "v1") == "example.com/widget_v1.json"
    return json.loads(refresh.serialize(converted["v1"]))


def test_strict_crd_conversion() -> None:
    schema = widget_schema("strict")
    assert schema == {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": SPEC,
            "status": STATUS,
        },
        "additionalProperties": False,
        "definitions": {"parts.items": PART},
    }
    # What that means for objects (kubeconform reads a file without $schema as draft 4).
    validator = Draft4Validator(schema)
    widget: dict[str, Any] = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "labels": {"a": "b"}},
        "spec": {
            "size": 1,
            "description": "d",
            "extra": {"known": "k", "anything": 1},
            "parts": [{"name": "p"}],
            "spares": [{"name": "s"}],
        },
    }
    assert not list(validator.iter_errors(widget))
    for bad in (
        {**widget, "spec": {**widget["spec"], "sizes": 2}},
        {**widget, "spec": {**widget["spec"], "parts": [{"nmae": "p"}]}},
        {**widget, "spec": {**widget["spec"], "spares": [{"name": 1}]}},
        {**widget, "spec": {**widget["spec"], "spares": [{"name": "s"}] * 4}},
        {**widget, "extra": 1},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_datreeio_crd_conversion() -> None:
    # The catalog's rules: the root stays open and unchanged, preserve-unknown-fields is ignored.
    schema = widget_schema("datreeio")
    extra = {**SPEC["properties"]["extra"], "additionalProperties": False}
    spec = {**SPEC, "properties": {**SPEC["properties"], "extra": extra}}
    assert schema == {
        "type": "object",
        "properties": {"spec": spec, "status": STATUS},
        "definitions": {"parts.items": PART},
    }


def test_crds_are_found_in_lists_and_multi_document_files() -> None:
    crd = yaml.safe_load(CRD_YAML)
    text = "---\n# comment\n---\n" + yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [crd]})
    assert [c["metadata"]["name"] for c in refresh.load_crds(text)] == ["widgets.example.com"]


def test_strip_annotations_keeps_properties_with_such_names() -> None:
    schema = {
        "description": "An object.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "description": {"description": "A field named description.", "type": "string"},
            "tags": {
                "type": "array",
                "x-kubernetes-list-type": "set",
                "items": {"description": "A tag.", "type": "string"},
            },
            "x-kubernetes-note": {"type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]},
        },
        "patternProperties": {"^description$": {"description": "Also kept as a name.", "type": "string"}},
        "anyOf": [{"description": "Needs one.", "required": ["description"]}],
        "default": {"description": "data, not an annotation", "x-kubernetes-list-type": "data"},
    }
    assert refresh.strip_annotations(schema) == {
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "x-kubernetes-note": {"type": "string"},
        },
        "patternProperties": {"^description$": {"type": "string"}},
        "anyOf": [{"required": ["description"]}],
        "default": {"description": "data, not an annotation", "x-kubernetes-list-type": "data"},
    }


TLS: dict[str, Any] = {
    "type": "object",
    "properties": {"ca": {"type": "string"}, "verify": {"type": "boolean"}},
    "additionalProperties": False,
}
ADDRESS: dict[str, Any] = {
    "type": "object",
    "required": ["host"],
    "properties": {"host": {"type": "string"}, "port": {"type": "integer"}, "tls": TLS},
    "additionalProperties": False,
}
SERVERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "primary": ADDRESS,
        "backups": {"type": "array", "items": ADDRESS},
        "name": {"type": "string"},  # repeated, but too small to be worth a $ref
        "alias": {"type": "string"},
    },
    "additionalProperties": False,
}
SERVERS_INSTANCES: list[Any] = [
    {"primary": {"host": "a", "tls": {"verify": True}}, "backups": [{"host": "b", "port": 1}]},
    {"primary": {"host": "a"}, "backups": [{"host": "b", "tls": {"verify": "yes"}}]},
    {"primary": {"host": "a"}, "backups": [{"host": "b", "tls": {"verfiy": True}}]},
    {"primary": {"host": "a"}, "backups": [{"port": 1}]},
    {"primary": {"host": "a", "hostname": "a"}},
    {"primary": {"host": "a", "tls": {}}, "adminTls": {"ca": "c"}},
    {"primary": {"host": "a", "tls": {}}, "adminTls": {"ca": 1}},
    {"primary": {"host": "a", "tls": {}}, "adminTls": {"ca": "c", "crt": "c"}},
    {"name": "n", "alias": 1},
    {"name": "n", "alias": "a"},
]


def test_repeated_subschemas_are_written_once_in_draft_4() -> None:
    shared = refresh.share_subschemas(SERVERS)
    assert shared == {
        "type": "object",
        "properties": {
            "primary": {"$ref": "#/definitions/primary"},
            "backups": {"type": "array", "items": {"$ref": "#/definitions/primary"}},
            "name": {"type": "string"},
            "alias": {"type": "string"},
        },
        "additionalProperties": False,
        # TLS occurs twice in SERVERS, but once in ADDRESS, which is now written once.
        "definitions": {"primary": ADDRESS},
    }
    assert refresh.dump(refresh.expand_shared(shared)) == refresh.dump(SERVERS)
    verdicts = [Draft4Validator(SERVERS).is_valid(i) for i in SERVERS_INSTANCES]
    assert [Draft4Validator(shared).is_valid(i) for i in SERVERS_INSTANCES] == verdicts
    assert verdicts == [True, False, False, False, False, False, False, False, False, True]


def test_repeated_subschemas_are_written_once_in_draft_2020_12() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **SERVERS,
        "properties": {**SERVERS["properties"], "adminTls": TLS},
    }
    shared = refresh.share_subschemas(schema)
    tls_ref = {"$ref": "#/$defs/tls"}
    assert shared == {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "primary": {"$ref": "#/$defs/primary"},
            "backups": {"type": "array", "items": {"$ref": "#/$defs/primary"}},
            "name": {"type": "string"},
            "alias": {"type": "string"},
            "adminTls": tls_ref,
        },
        "additionalProperties": False,
        "$defs": {
            "primary": {**ADDRESS, "properties": {**ADDRESS["properties"], "tls": tls_ref}},
            "tls": TLS,
        },
    }
    assert refresh.dump(refresh.expand_shared(shared)) == refresh.dump(schema)
    verdicts = [Draft202012Validator(schema).is_valid(i) for i in SERVERS_INSTANCES]
    assert [Draft202012Validator(shared).is_valid(i) for i in SERVERS_INSTANCES] == verdicts
    assert verdicts == [True, False, False, False, False, True, False, False, False, True]


def test_shared_subschemas_get_unique_names_from_where_they_first_occur() -> None:
    strings = {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "string"}}}
    numbers = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}}
    schema = {
        "properties": {
            "one": {"properties": {"app.io/name": strings}},
            "two": {"properties": {"app.io/name": numbers}},
            "three": {"items": strings, "anyOf": [numbers, {"required": ["x"]}]},
        }
    }
    assert refresh.share_subschemas(schema) == {
        "properties": {
            "one": {"properties": {"app.io/name": {"$ref": "#/definitions/app.io_name"}}},
            "two": {"properties": {"app.io/name": {"$ref": "#/definitions/app.io_name-2"}}},
            "three": {
                "items": {"$ref": "#/definitions/app.io_name"},
                "anyOf": [{"$ref": "#/definitions/app.io_name-2"}, {"required": ["x"]}],
            },
        },
        "definitions": {"app.io_name": strings, "app.io_name-2": numbers},
    }
    # Nothing repeated: nothing changes.
    assert refresh.share_subschemas(strings) == strings


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"$ref": "other.json#/definitions/a"}}, "definitions": {"a": {}}},
        {"properties": {"a": {"$ref": "#/definitions/a", "type": "object"}}, "definitions": {"a": {}}},
        {"properties": {"a": {"$ref": "#/definitions/b"}}, "definitions": {"a": {}}},
        {"properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {}}},  # draft 4: definitions
        {
            "properties": {"a": {"$ref": "#/definitions/a"}},
            "definitions": {"a": {"properties": {"b": {"$ref": "#/definitions/a"}}}},
        },
    ],
    ids=["other-file", "sibling", "missing", "wrong-keyword", "recursive"],
)
def test_only_whole_local_non_recursive_refs_are_expanded(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="reference"):
        refresh.expand_shared(schema)


def test_only_plain_schemas_are_shared() -> None:
    with pytest.raises(ValueError, match=r"uses '\$ref'"):
        refresh.share_subschemas({"properties": {"a": {"$ref": "#/definitions/a"}}})


def test_core_schemas_are_made_standalone() -> None:
    defs = {
        "io.k8s.A": {
            "description": "A.",
            "type": "object",
            "properties": {"b": {"$ref": "#/$defs/io.k8s.B"}},
        },
        "io.k8s.B": {"description": "B.", "type": ["string", "null"]},
    }
    kind = {
        "properties": {"a": {"$ref": "/api/_definitions.json#/$defs/io.k8s.A", "description": "Beside."}},
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kubernetes.io/api/x",
    }
    assert refresh.standalone_core_schema(kind, defs) == {
        "properties": {
            "a": {
                "description": "Beside.",
                "type": "object",
                "properties": {"b": {"description": "B.", "type": ["string", "null"]}},
            }
        },
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }
    assert refresh.core_file_name("v1", "ConfigMap") == "configmap-v1.json"
    assert refresh.core_file_name("rbac.authorization.k8s.io/v1", "ClusterRole") == "clusterrole-rbac-v1.json"
