"""Which schema revision the database has, and which the code needs, without importing Alembic.

The handler checks this at start-up; Alembic itself (tens of MiB of imports) is
only loaded by ``command-handler migrate`` and the local stack.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"  # package data: Alembic's env and revisions
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
_REVISION = re.compile(r'^revision\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)
_DOWN = re.compile(r'^down_revision\s*=\s*(?:["\']([^"\']+)["\']|None)', re.MULTILINE)


@cache
def expected_head(versions_dir: Path = VERSIONS_DIR) -> str:
    """The one revision no other revision builds on."""
    revisions, parents = set(), set()
    for path in versions_dir.glob("*.py"):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN.search(source)
        if revision:
            revisions.add(revision.group(1))
        if down and down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"expected one head revision in {versions_dir}, found {sorted(heads)}")
    return heads.pop()


def database_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except ProgrammingError:  # no alembic_version table: never migrated
        return None
