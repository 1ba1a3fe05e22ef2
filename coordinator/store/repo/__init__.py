"""Data access: small functions, one per query, over the ``tx`` of a store write (or the
reader connection). They hold SQL and turn rows into values; they decide nothing. The rules
that call them live in ``coordinator.services``; the store's async methods open a
transaction and call a service.
"""
