"""The dashboard tests' handles: the running service seen through its API (`Dashboard`), and screenshots."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ftserve_process import FtserveProcess


@dataclass
class Dashboard:
    """The session's `ftserve up`, one organization's key, and a plain HTTP client for setup and checks."""

    server: FtserveProcess
    key: str
    root: str
    http: httpx.Client
    state: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.root}{path}"

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        response = self.http.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, data)})
        assert response.status_code == 200, response.text
        return response.json()

    def create_job(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status().json()


class Shots:
    """Screenshots of one test, numbered in order: test-output/ui/<test>/<nn>-<step>-<width>.png."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, page: Any, step: str, *, full_page: bool = True) -> Path:
        self.count += 1
        width = page.viewport_size["width"] if page.viewport_size else 0
        path = self.folder / f"{self.count:02d}-{step}-{width}.png"
        if full_page:  # from the top, so the sticky header sits where a reader sees it
            page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=full_page)
        return path
