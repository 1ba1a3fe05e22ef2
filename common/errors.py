"""One error hierarchy, mapped to HTTP statuses here and nowhere else.

Handlers raise these; the coordinator's error handler turns them into the error envelope
``{"error": {"code", "message", "field", "requestId"}}``. The CLI raises ``ApiError`` when
it reads such an envelope back.
"""

from __future__ import annotations


class ComputeError(Exception):
    status = 500
    default_code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field


class BadRequest(ComputeError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ComputeError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ComputeError):
    status = 403
    default_code = "forbidden"


class NotFound(ComputeError):
    status = 404
    default_code = "not_found"


class RequestTimeout(ComputeError):
    status = 408
    default_code = "request_timeout"


class Conflict(ComputeError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ComputeError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(ComputeError):
    status = 415
    default_code = "unsupported_media_type"


class Unprocessable(ComputeError):
    status = 422
    default_code = "invalid_value"


class RateLimited(ComputeError):
    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds


class ApiError(Exception):
    """An error envelope received from the API (client side)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
