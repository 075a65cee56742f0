"""One error path: every error reply, from a route, a framework check or a pure-ASGI middleware, is OpenAI's
envelope made by api/errors.py, and every domain error class is raised somewhere."""

from __future__ import annotations

import ast
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from core import errors
from core.settings import Settings
from tests.support.openai_schema import assert_valid

ROOT = Path(__file__).resolve().parents[2]


def test_an_unhandled_exception_is_a_500_envelope_with_the_request_id(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret detail that must not leak")

    with TestClient(app) as client:
        resp = client.get("/v1/boom")
    assert resp.status_code == 500
    body = resp.json()
    assert_valid("ErrorResponse", body)
    rid = resp.headers["x-request-id"]
    assert body["error"]["type"] == "server_error" and f"request id {rid}" in body["error"]["message"]
    assert "secret" not in resp.text


def test_no_module_builds_an_error_envelope_by_hand() -> None:
    """A dict literal with "message", "type" and "param" (an envelope's inside) exists only in api/errors.py."""
    offenders = []
    for path in [*ROOT.glob("api/**/*.py"), *ROOT.glob("core/**/*.py"), *ROOT.glob("scheduler/**/*.py")]:
        if path == ROOT / "api" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"message", "type", "param"} <= keys:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_every_domain_error_class_is_raised_somewhere() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.FtserveError)
        and value is not errors.FtserveError
    }
    source = "\n".join(
        p.read_text()
        for pattern in ("api/**/*.py", "core/**/*.py", "scheduler/**/*.py", "cli/**/*.py")
        for p in ROOT.glob(pattern)
        if p != ROOT / "core" / "errors.py"
    )
    unused = sorted(name for name in classes if f"{name}(" not in source)
    assert unused == []


def test_the_api_docs_list_every_status_the_api_returns() -> None:
    from api.errors import STATUS_BY_ERROR

    docs = (ROOT / "docs" / "api.md").read_text()
    statuses = {status for _cls, status in STATUS_BY_ERROR} | {400, 404, 405, 500}
    missing = sorted(s for s in statuses if f"| {s} |" not in docs)
    assert missing == []
