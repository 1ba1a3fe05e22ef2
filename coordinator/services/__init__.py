"""Business rules over the store, as plain functions.

Each function takes ``tx`` (the transaction handle a store write passes to its closure), the
clock reading ``now`` (integer milliseconds) and whatever settings it needs as explicit
arguments. It holds the decisions (what a meter tick changes, what an invoice says, what a
webhook event carries) and reaches the database only through the data-access functions in
``coordinator.store.repo``. The store's async methods open the transaction and call these;
they never decide anything themselves.
"""
