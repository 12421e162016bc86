"""Throw-away databases on the PostgreSQL server of this machine (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

HOST, PORT, ADMIN_USER = "127.0.0.1", 5432, "postgres"


@dataclass(frozen=True)
class Database:
    name: str
    host: str = HOST
    port: int = PORT
    user: str = ADMIN_USER

    def url(self, password: str = "", *, scheme: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL (psycopg2: SQLAlchemy 2.1 would pick psycopg 3 for `postgresql://`)."""
        secret = f":{password}" if password else ""
        return f"{scheme}://{self.user}{secret}@{self.host}:{self.port}/{self.name}"

    def query(self, statement: str) -> list[tuple]:
        with closing(_connect(self.name)) as connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()


@contextmanager
def temporary_database(prefix: str) -> Iterator[Database]:
    """CREATE DATABASE <prefix>_<random> for the block; DROP it (connections and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield Database(name)
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with closing(_connect("postgres")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cursor.fetchone() is not None


def _admin(statement: sql.Composable) -> None:
    connection = _connect("postgres")
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def _connect(name: str):
    return psycopg2.connect(host=HOST, port=PORT, user=ADMIN_USER, dbname=name)
