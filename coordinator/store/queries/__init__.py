"""The store's query mixins, one per concept: backend-neutral (portable SQL over a ``Tx``).

``SqliteStore`` and ``PgStore`` are both composed of them; only the database core under them differs
(``sqlite_core.py``, ``postgres_core.py``). The rules they call live in ``coordinator/services``.
"""
