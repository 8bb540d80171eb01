"""SSH targets: the connection (connection.py) and the Lab synchronisation over it (sync.py)."""
