"""Alembic environment of the endpoint's database (the URL comes from open_bank_endpoint.store.upgrade)."""

from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(str(url), poolclass=pool.NullPool)
with engine.connect() as conn:
    context.configure(connection=conn, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
