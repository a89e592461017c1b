"""JSON schemas kubeconform validates deploy/k8s/ against, laid out as it looks them up.

    python -m deploy.k8s.schemas --out DIR --kubernetes WHEEL --kubernetes-version 1.33.0 \\
        --crds JAR_OR_YAML ...

writes DIR/{kind}-{group}-{version}.json (kubeconform's `{{.ResourceKind}}{{.KindSuffix}}`,
group = the first label of the API group; core kinds have none: configmap-v1.json):

- Kubernetes' own kinds from the kubernetes-validate wheel (PyPI), its
  `v{version}-local-strict` directory (every object closed: additionalProperties false). Their
  `$ref`s point at https://kubernetes.io/api/_definitions.json; they are rewritten to the
  `_definitions.json` copied beside them, so kubeconform resolves them from the disk.
- Custom resources from the CRDs (`CustomResourceDefinition` YAML, loose or inside jars):
  each served version's openAPIV3Schema, closed like kubectl's strict validation (an object
  with `properties` and no `additionalProperties` gets `additionalProperties: false`,
  unless it has `x-kubernetes-preserve-unknown-fields`), `int-or-string` as a oneOf.

One deviation from a published schema, named here so it is not silent: FLINK_VERSIONS_ADDED
extends FlinkDeployment's `spec.flinkVersion` enum. The newest Flink Kubernetes Operator
API on Maven Central here is 1.10.0, whose enum ends at v1_20; the operator's own source
lists v2_0 .. v2_3 in later releases (v2_3 from 1.16), and our job runs on Flink 2.3. Every
other field of the FlinkDeployment is checked against 1.10.0's schema as published.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

K8S_REF = "/api/_definitions.json#"
LOCAL_REF = "_definitions.json#"
FLINK_GROUP = "flink.apache.org"
FLINK_VERSIONS_ADDED = ("v2_0", "v2_1", "v2_2", "v2_3")


def schema_name(kind: str, group: str, version: str) -> str:
    """kubeconform's file name: `{kind}-{first label of group}-{version}.json`, lower case."""
    parts = [kind, group.split(".")[0], version] if group else [kind, version]
    return "-".join(parts).lower() + ".json"


def close_objects(schema: Any) -> Any:
    """A copy of `schema` where every object schema with `properties` refuses fields it does
    not name (what `kubectl --validate=strict` does), except where the CRD keeps unknown
    fields; `format: int-or-string` becomes a oneOf, as Kubernetes reads it."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-kubernetes-int-or-string") or schema.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = {k: close_objects(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{file name: JSON schema} for each served version of one CustomResourceDefinition."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        raw = (version.get("schema") or {}).get("openAPIV3Schema")
        if raw is None or not version.get("served", True):
            continue
        schema = copy.deepcopy(raw)
        # Some generators (Fabric8's: the Flink operator) leave the fields every object has
        # out of the root; name them, so a closed root still accepts them.
        root = schema.setdefault("properties", {})
        for field, type_ in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
            root.setdefault(field, {"type": type_})
        schema = close_objects(schema)
        if group == FLINK_GROUP and kind == "FlinkDeployment":
            enum = schema["properties"]["spec"]["properties"]["flinkVersion"]["enum"]
            enum.extend(v for v in FLINK_VERSIONS_ADDED if v not in enum)
        out[schema_name(kind, group, version["name"])] = schema
    return out


def crd_documents(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every CustomResourceDefinition in the YAML files and jars (their *.yaml/*.yml)."""
    for path in paths:
        if path.suffix == ".jar":
            with zipfile.ZipFile(path) as jar:
                texts = [
                    jar.read(n).decode()
                    for n in sorted(jar.namelist())
                    if n.endswith((".yaml", ".yml"))
                ]
        else:
            texts = [path.read_text()]
        for text in texts:
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


def write_kubernetes(wheel: Path, version: str, out: Path) -> int:
    """Copy the `v{version}-local-strict` schemas of a kubernetes-validate wheel into `out`,
    their `$ref`s made local."""
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    n = 0
    with zipfile.ZipFile(wheel) as whl:
        for name in sorted(whl.namelist()):
            if not (name.startswith(prefix) and name.endswith(".json")):
                continue
            schema = json.loads(whl.read(name))
            schema.pop("$id", None)  # refs then resolve against the file's own location
            text = json.dumps(schema).replace(f'"{K8S_REF}', f'"{LOCAL_REF}')
            (out / name.removeprefix(prefix)).write_text(text)
            n += 1
    if not (out / "_definitions.json").is_file():
        raise FileNotFoundError(f"{wheel} has no {prefix}_definitions.json")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.k8s.schemas", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kubernetes", type=Path, required=True, help="kubernetes-validate wheel")
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.33.0")
    parser.add_argument("--crds", type=Path, nargs="+", required=True, help="YAML files or jars")
    args = parser.parse_args(argv)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = write_kubernetes(args.kubernetes, args.kubernetes_version, tmp)
    crds = 0
    for crd in crd_documents(args.crds):
        for name, schema in crd_schemas(crd).items():
            if (tmp / name).exists():  # a later copy of a version (Strimzi's v1beta2 set)
                continue
            (tmp / name).write_text(json.dumps(schema))
            crds += 1
    if not crds:
        raise SystemExit(f"no CustomResourceDefinition found in {args.crds}")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"{args.out}: {n} Kubernetes schemas, {crds} from CRDs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
