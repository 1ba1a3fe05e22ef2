"""``jobs run --array`` and the ``arrays`` group: the real ``tanvrit-compute`` binary against a
real coordinator process (no agent: the tasks stay QUEUED, which is what the summary shows)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from cli.arrays import array_body, parse_array_spec
from tests.cli_harness import assert_clean_error, run_cli
from tests.procs import Coordinator


def test_slurm_style_specs_parse_into_count_and_max_parallel() -> None:
    assert parse_array_spec("0-99%10") == {"count": 100, "maxParallel": 10}
    assert parse_array_spec("0-0") == {"count": 1}
    assert array_body(None, 5, 2) == {"count": 5, "maxParallel": 2}
    assert array_body(None, None, None) is None
    for bad in ("5-9", "0-", "10", "0-9%", "a-b"):
        with pytest.raises(click.BadParameter):
            parse_array_spec(bad)
    with pytest.raises(click.UsageError):
        array_body("0-9", 10, None)
    with pytest.raises(click.UsageError):
        array_body(None, None, 3)


def test_run_an_array_then_get_list_its_tasks_and_cancel(coordinator: Coordinator, tmp_path: Path) -> None:
    home = tmp_path / "home"
    submitted = run_cli(home, coordinator, "--json", "jobs", "run", "--array", "0-9%3", "--name", "sweep",
                        "--", "echo", "$TANVRIT_ARRAY_INDEX")
    assert submitted.returncode == 0, submitted.stderr
    array = json.loads(submitted.stdout)
    assert (array["count"], array["maxParallel"], array["summary"]["QUEUED"]) == (10, 3, 10)

    shown = run_cli(home, coordinator, "arrays", "get", array["id"])
    assert shown.returncode == 0 and "QUEUED 10" in shown.stdout and "sweep" in shown.stdout
    listed = run_cli(home, coordinator, "arrays", "list")
    assert listed.returncode == 0 and array["id"] in listed.stdout
    tasks = run_cli(home, coordinator, "--json", "jobs", "list", "--array", array["id"])
    items = json.loads(tasks.stdout)["items"]
    assert sorted(task["arrayIndex"] for task in items) == list(range(10))
    # Queued tasks say where they stand: index 0 is next.
    assert {task["arrayIndex"]: task["position"] for task in items}[0] == 1
    one = run_cli(home, coordinator, "jobs", "get", items[0]["id"])
    assert "array index" in one.stdout and "position" in one.stdout

    cancelled = run_cli(home, coordinator, "--json", "arrays", "cancel", array["id"])
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["summary"]["CANCELLED"] == 10
    assert run_cli(home, coordinator, "arrays", "logs", array["id"]).stdout == ""

    count_form = run_cli(home, coordinator, "--json", "jobs", "run", "--array-count", "4", "--max-parallel", "2",
                         "--", "true")
    assert json.loads(count_form.stdout)["count"] == 4


def test_bad_array_specs_are_refused_before_any_request(coordinator: Coordinator, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_clean_error(run_cli(home, coordinator, "jobs", "run", "--array", "1-10", "--", "true"), code=2)
    over = run_cli(home, coordinator, "jobs", "run", "--array", "0-10000", "--", "true")
    assert_clean_error(over)
    assert "array.count" in over.stderr
    missing = run_cli(home, coordinator, "arrays", "get", "arr_01hzzzzzzzzzzzzzzzzzzzzzzz")
    assert_clean_error(missing)
