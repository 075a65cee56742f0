"""The DB layer on SQLite and PostgreSQL: migrations, organizations, hashed API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.db import make_engine, migrate, session_scope
from core.errors import AuthenticationError, InvalidRequestError
from core.keys import KEY_PREFIX, authenticate, create_key, hash_key, revoke_key
from core.models import ApiKey


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    migrate(url)
    migrate(url)  # idempotent
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_migrations_create_tables(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {"organizations", "api_keys", "files", "alembic_version"} <= tables


def test_key_is_stored_hashed_and_authenticates(engine: Engine) -> None:
    with session_scope(engine) as session:
        row, key = create_key(session, org_name="acme")
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    with Session(engine) as session:
        stored = session.exec(select(ApiKey)).one()
        assert stored.key_hash == hash_key(key) and key not in stored.key_hash
        assert stored.display_prefix == key[: len(KEY_PREFIX) + 4]
        _key, org = authenticate(session, key=key)
        assert org.name == "acme"
        with pytest.raises(AuthenticationError):
            authenticate(session, key=key + "x")
        with pytest.raises(AuthenticationError):
            authenticate(session, key=None)


def test_two_keys_share_one_org_and_revocation_works(engine: Engine) -> None:
    with session_scope(engine) as session:
        first, key1 = create_key(session, org_name="acme")
        second, key2 = create_key(session, org_name="acme")
    assert first.organization_id == second.organization_id and key1 != key2
    with session_scope(engine) as session:
        revoke_key(session, key_id=first.id)
    with Session(engine) as session:
        with pytest.raises(AuthenticationError):
            authenticate(session, key=key1)
        assert authenticate(session, key=key2)[1].name == "acme"


def test_bad_org_name_is_refused(engine: Engine) -> None:
    with session_scope(engine) as session, pytest.raises(InvalidRequestError):
        create_key(session, org_name="Not A Slug!")
