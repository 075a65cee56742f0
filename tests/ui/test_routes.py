"""The /ui routes without a browser: the shell, deep links, static assets, security headers."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings
from tests.support.keys import make_key


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("ui-routes"))


@pytest.fixture(scope="module")
def client(module_settings: Settings) -> Iterator[TestClient]:
    """One app for the module: these tests only read."""
    with TestClient(create_app(module_settings)) as test_client:
        yield test_client


def test_shell_is_served_at_ui_and_every_deep_link(client: TestClient) -> None:
    first = client.get("/ui")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/html")
    assert first.headers["cache-control"] == "no-store"
    assert "{{" not in first.text  # every placeholder filled
    for path in ("/ui/", "/ui/files", "/ui/jobs/ftjob-abc", "/ui/jobs/new", "/ui/playground"):
        response = client.get(path)
        assert response.status_code == 200 and response.text == first.text, path


def test_shell_has_a_strict_policy_and_no_inline_code(client: TestClient) -> None:
    response = client.get("/ui")
    policy = response.headers["content-security-policy"]
    assert (
        "default-src 'self'" in policy
        and "script-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
    )
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    # Every script is an external file of ours: nothing inline that the policy would have to allow.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, flags=re.S)
    assert scripts and all('src="/ui/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert " style=" not in response.text and "<style" not in response.text


def test_the_key_sent_to_ui_is_never_echoed(client: TestClient, module_settings: Settings) -> None:
    key = make_key(module_settings, "ui-routes")
    response = client.get("/ui/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert key not in response.text
    assert "set-cookie" not in response.headers


def test_static_assets_have_types_and_revalidate(client: TestClient) -> None:
    expected = {
        "/ui/static/app.css": "text/css",
        "/ui/static/js/app.js": "text/javascript",
        "/ui/static/vendor/chart.umd.min.js": "text/javascript",
        "/ui/static/favicon.svg": "image/svg+xml",
    }
    for path, kind in expected.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-content-type-options"] == "nosniff"
        again = client.get(path, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304, path


def test_static_refuses_missing_files_and_paths_outside_its_folder(client: TestClient) -> None:
    for path in ("/ui/static/nope.js", "/ui/static/%2e%2e/index.html", "/ui/static/..%2f..%2froutes/ui.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui"


def test_shell_follows_a_path_prefix(module_settings: Settings) -> None:
    """Behind a proxy that mounts the API under /ftserve, the shell links its assets and the API there."""
    with TestClient(create_app(module_settings), root_path="/ftserve") as prefixed:
        text = prefixed.get("/ui").text
    assert 'content="/ftserve"' in text
    assert 'src="/ftserve/ui/static/js/app.js"' in text


def test_ui_is_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]
