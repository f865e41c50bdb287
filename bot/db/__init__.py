"""Database backends: SQLite (embedded, the default) and PostgreSQL (several processes)."""
