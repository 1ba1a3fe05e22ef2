"""The store's errors carry no HTTP; the app maps each kind to the error envelope in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.store import errors
from tests.inproc import open_inprocess


@pytest.mark.parametrize(("error", "status", "code", "field"), [
    (errors.StaleState("job job_x is no longer QUEUED at epoch 0"), 409, "stale_state", None),
    (errors.MembershipConflict("last_owner", "a workspace must keep at least one owner"), 409, "last_owner", None),
    (errors.NotFound("no such row"), 404, "not_found", None),
    (errors.InvalidValue("hardCapUsd (5) must not be below softCapUsd (10)", field="hardCapUsd"), 422,
     "invalid_value", "hardCapUsd"),
    (errors.StoreClosed("the store is shutting down"), 503, "store_closed", None),
])
async def test_store_errors_become_envelopes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            error: errors.StoreError, status: int, code: str,
                                            field: str | None) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        async def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise error

        # The store is real; only this one call is made to fail the way a backend would.
        monkeypatch.setattr(co.store, "cancel_job", refuse)
        response = await api.post("/v0/jobs/job_x:cancel")
        assert response.status_code == status
        body = response.json()["error"]
        assert (body["code"], body["message"], body["field"]) == (code, error.message, field)
        assert body["requestId"].startswith("req_")
        assert ("Retry-After" in response.headers) == (status == 503)


async def test_an_unmapped_store_error_is_an_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        async def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise errors.StoreError("a path to the file: /var/lib/secret")

        monkeypatch.setattr(co.store, "cancel_job", refuse)
        response = await api.post("/v0/jobs/job_x:cancel")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "/var/lib/secret" not in response.text
