"""OpenAI's published response schemas (a subset of OpenAI's OpenAPI spec, vendored as
tests/support/openai_openapi_subset.yaml), as jsonschema validators. The spec mixes OpenAPI 3.0's
`nullable: true` with 3.1's `type: 'null'`, and 3.0's boolean `exclusiveMinimum: true` (beside `minimum`) with
3.1's numeric one; the 3.0 forms are rewritten to the 3.1 ones (a boolean `exclusiveMinimum` read as 3.1 would
mean "greater than 1")."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).with_name("openai_openapi_subset.yaml")


def _to_openapi_31(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_openapi_31(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _to_openapi_31(value) for key, value in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), bool):
            if node.pop(exclusive) and bound in node:
                node[exclusive] = node.pop(bound)
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache
def _components() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    return {"schemas": _to_openapi_31(spec["components"]["schemas"])}


def validator(schema_name: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    return cls(schema)


def assert_valid(schema_name: str, body: Any) -> None:
    errors = sorted(validator(schema_name).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{schema_name}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
    )
