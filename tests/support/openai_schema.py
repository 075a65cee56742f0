"""OpenAI's published response schemas (a subset of OpenAI's OpenAPI spec, vendored as
tests/support/openai_openapi_subset.yaml), as jsonschema validators. The spec mixes OpenAPI 3.0's
`nullable: true` with 3.1's `type: 'null'`; the former is rewritten to the latter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).with_name("openai_openapi_subset.yaml")


def _nullable_to_31(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_31(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_31(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache
def _components() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    return {"schemas": _nullable_to_31(spec["components"]["schemas"])}


def validator(schema_name: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    return cls(schema)


def assert_valid(schema_name: str, body: Any) -> None:
    errors = sorted(validator(schema_name).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{schema_name}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
    )
