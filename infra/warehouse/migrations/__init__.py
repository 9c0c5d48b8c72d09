"""Alembic migrations for the warehouse; run through infra.warehouse.db.upgrade(), not alembic.ini."""
