"""API keys for tests, made straight in the database `settings` names (migrated first)."""

from __future__ import annotations

from core.db import make_engine, migrate, session_scope
from core.keys import create_key
from core.settings import Settings


def make_key(settings: Settings, org: str) -> str:
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        _row, key = create_key(session, org_name=org)
    engine.dispose()
    return key
