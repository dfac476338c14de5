"""Validating Kubernetes manifests offline: no cluster, no network.

- Kubernetes' own kinds (Namespace, Deployment, Service, RBAC, ...) go through
  `kubernetes-validate` (PyPI), which ships the JSON schemas generated from each Kubernetes
  release's OpenAPI, and validates strictly (an unknown field is an error, as
  `kubectl --validate=strict` would say).
- Agones' kinds (Fleet, FleetAutoscaler, GameServer, ...) have no schema there: kubernetes-validate
  knows no CustomResourceDefinitions. They are validated against the OpenAPI v3 schema in Agones'
  own CRDs (tests/data/agones/agones-crds.yaml.gz) with `jsonschema`, made strict the way the API
  server is for a structural schema (unknown fields refused instead of pruned), and their
  `metadata` against Kubernetes' ObjectMeta.

kubeconform would do both, but it is a Go binary that no package registry here ships.
"""

from __future__ import annotations

import copy
import functools
import gzip
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "agones" / "agones-crds.yaml.gz"
KUBERNETES_VERSION = "1.33"  # Agones 1.57 (the CRDs' chart) supports Kubernetes 1.32 to 1.34


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict JSON schema of that Agones resource."""
    with gzip.open(CRDS, "rt") as f:
        crds = [doc for doc in yaml.load_all(f, Loader=yaml.CSafeLoader) if doc]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            api_version = f"{group}/{version['name']}"
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # what the API server adds to every CRD's schema (metadata: checked as ObjectMeta)
            schema.setdefault("properties", {}).update(
                {
                    "apiVersion": {"enum": [api_version]},
                    "kind": {"enum": [kind]},
                    "metadata": {"type": "object"},
                }
            )
            found[(api_version, kind)] = strict(schema)
    return found


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema: unknown fields refused where the API
    server would prune them, int-or-string and nullable spelled out."""
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    props = schema.get("properties")
    if isinstance(props, dict):
        for value in props.values():
            strict(value)
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                strict(sub)
    return schema


@functools.cache
def core_validator(name: str) -> jsonschema.protocols.Validator:
    """A strict validator for one of Kubernetes' own types, by kubernetes-validate's file name
    (e.g. "objectmeta-meta-v1", "podtemplatespec-v1"), resolved as kubernetes-validate does."""
    directory = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    schema = kubernetes_validate.utils.schema_contents(f"{directory}/{name}.json", KUBERNETES_VERSION)
    definitions = kubernetes_validate.utils.schema_contents(
        f"{directory}/_definitions.json", KUBERNETES_VERSION
    )
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _messages(validator: jsonschema.protocols.Validator, instance: Any, prefix: str = "") -> list[str]:
    return [
        prefix + ".".join(map(str, e.absolute_path)) + f": {e.message}"
        for e in validator.iter_errors(instance)
    ]


def errors(doc: dict[str, Any]) -> list[str]:
    """Why the API server would refuse this object (empty: it would take it)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    schema = crd_schemas().get(key)
    if schema is None:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"no schema for {key}: {exc.message}"]
        return []
    found = _messages(jsonschema.Draft4Validator(schema), doc)
    found += _messages(core_validator("objectmeta-meta-v1"), doc.get("metadata") or {}, "metadata.")
    pods = (doc.get("spec") or {}).get("template", {}).get("spec", {}).get("template")
    if doc["kind"] == "Fleet" and pods is not None:  # the pod template, as Kubernetes checks it
        found += _messages(core_validator("podtemplatespec-v1"), pods, "spec.template.spec.template.")
    return found
