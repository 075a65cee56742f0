#!/usr/bin/env python3
"""Container HEALTHCHECK: exit 0 when a probe URL answers 200, else 1. Standard library only, so it runs in
every image (the slim ones have no curl).

    ftserve-healthcheck [URL]

Without a URL it probes /healthz on FTSERVE_HEALTH_PORT (scheduler, worker) when that is set, else on
FTSERVE_PORT (the API, default 8000).
"""

import os
import sys
import urllib.error
import urllib.request


def default_url() -> str:
    health_port = os.environ.get("FTSERVE_HEALTH_PORT", "0")
    port = health_port if health_port not in ("", "0") else os.environ.get("FTSERVE_PORT", "8000")
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else default_url()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
