"""Keep secrets out of the API's logs: uvicorn's access log prints every request line, query string
included, so a client that puts its key in a URL (`?api_key=...`) would have it written to disk."""

from __future__ import annotations

import logging
import re

# API keys and webhook secrets by their prefixes, and any query value whose name says it is a secret.
_SECRET = re.compile(
    r"ftsk-[A-Za-z0-9]{4,}|whsec_[A-Za-z0-9+/=_-]{4,}"
    r"|(?<=[?&])((?:api_?key|key|token|access_token|secret|password|signature)=)[^&\s\"]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class SecretRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Idempotent: one filter per logger, however many apps this process builds."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretRedactingFilter) for f in logger.filters):
            logger.addFilter(SecretRedactingFilter())
