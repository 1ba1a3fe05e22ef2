"""The store's own errors: the same from every backend, and free of HTTP.

The store says what went wrong in its terms; the API maps these to the error envelope in
one place (``coordinator.app``): ``NotFound`` 404, ``Conflict`` (and its kinds) 409,
``InvalidValue`` 422, ``StoreClosed`` 503. A write that raises is rolled back whole.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose. ``code`` is a stable snake_case name."""

    code = "store_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(StoreError):
    """The row the change is about does not exist (in this workspace)."""

    code = "not_found"


class Conflict(StoreError):
    """The change contradicts the data as it stands."""

    code = "conflict"


class StaleState(Conflict):
    """A compare-and-set lost: the row is no longer in the state (or epoch) the change was
    decided on, because another transaction changed it first. Nothing was written."""

    code = "stale_state"


class IdempotencyConflict(Conflict):
    """The idempotency key was used before with a different request body."""

    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"the idempotency key {key!r} was used with a different request body")
        self.key = key


class MembershipConflict(Conflict):
    """A membership change that the rules forbid; ``code`` names the rule (``last_owner``, ``already_member``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class InvalidValue(StoreError):
    """A value that is well-formed but breaks a rule of the data; ``field`` names the input."""

    code = "invalid_value"

    def __init__(self, message: str, *, field: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class StoreClosed(StoreError):
    """The store no longer accepts writes (shutdown)."""

    code = "store_closed"


class SchemaTooNew(StoreError):
    """The database was migrated by a newer coordinator than this one; running on it could corrupt it."""

    code = "schema_too_new"


class UnknownDatabaseUrl(StoreError):
    """A database URL whose scheme no backend serves (or whose backend is not installed)."""

    code = "unknown_database_url"


class DatabaseUnavailable(StoreError):
    """The database cannot be reached (or refuses us) when the store opens."""

    code = "store_unavailable"  # as /readyz says it
