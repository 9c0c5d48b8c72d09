"""The warehouse: tables, migrations, connecting and bulk loading (SQLite by default, any SQLAlchemy URL)."""
