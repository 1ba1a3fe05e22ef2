"""Query filters reach the store's SQL only as values it cannot misread."""

from __future__ import annotations

from pathlib import Path

from tests.inproc import running_coordinator


async def test_a_label_filter_key_is_a_label_key_not_a_json_path(tmp_path: Path) -> None:
    """The key of ``label=key=value`` went into a JSON path of the store's query: a quote or a
    NUL in it was an SQLite error, a 500. Only keys a label can have are accepted."""
    async with running_coordinator(tmp_path) as coord, coord.client() as member:
        submitted = await member.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                         "labels": {"gpu.model/x-y_z": "A100"}})
        assert submitted.status_code == 201, submitted.text
        for pair in ('a"=1', 'a".b=1', "a b=1", "=1"):
            answer = await member.get("/v0/jobs", params={"label": pair})
            assert answer.status_code == 400, (pair, answer.text)
            assert answer.json()["error"]["field"] == "label"
        # A NUL anywhere in a query is refused before any route (no database can store it).
        answer = await member.get("/v0/jobs", params={"label": "\x00=1"})
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "label", answer.text
        found = await member.get("/v0/jobs", params={"label": "gpu.model/x-y_z=A100"})
        assert [job["id"] for job in found.json()["items"]] == [submitted.json()["id"]]
