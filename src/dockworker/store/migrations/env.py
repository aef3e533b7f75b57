"""Alembic environment: runs on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from dockworker.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("dockworker migrations run through Store.migrate(), which passes a connection")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
context.run_migrations()
