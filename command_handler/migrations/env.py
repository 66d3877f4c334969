"""Alembic environment: online migrations against the DB_* database."""

from alembic import context
from sqlalchemy import create_engine, pool

from command_handler.config import load_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or load_settings().database.url()
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
