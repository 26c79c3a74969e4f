"""The database: engines and sessions, tables, and every SQL statement on them."""
