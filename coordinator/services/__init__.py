"""Business rules of the coordinator, as plain functions over a write transaction.

The store methods call them inside ``_write``; each takes the transaction and ``now`` (the
clock is injected), so the rules are tested without the API and without sleeping.
"""
