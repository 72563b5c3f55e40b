"""The database: task records with leases, in SQLite."""
