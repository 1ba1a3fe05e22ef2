"""common/ids.py makes ULIDs itself (a request id each request): the same text as the ``ulid``
package would write, sortable in the order they were made, the time part from ``at``."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from ulid import ULID

from common import ids
from common.ids import encode, has_prefix, id_millis, new_id, new_ids


def test_encoding_is_the_ulid_packages() -> None:
    values = [0, 1, (1 << 128) - 1, 1 << 80, ((1 << 48) - 1) << 80]
    values += [random.getrandbits(128) for _ in range(20_000)]
    for value in values:
        assert encode(value) == str(ULID.from_int(value)).lower()


def test_ids_made_in_one_millisecond_sort_in_the_order_made() -> None:
    at = datetime(2026, 4, 26, 9, 0, tzinfo=UTC)
    ids = [new_id("job", at) for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    assert {str(ULID.from_str(job_id.removeprefix("job_").upper()).datetime) for job_id in ids} == {
        "2026-04-26 09:00:00+00:00"}
    assert all(has_prefix(job_id, "job") for job_id in ids)


def test_the_successors_new_ids_hands_out_are_never_made_again() -> None:
    at = datetime(2026, 4, 26, 9, 0, 1, tzinfo=UTC)
    before = new_id("job", at)
    tasks = new_ids("job", 50, at)
    after = new_id("job", at)
    assert [before, *tasks, after] == sorted([before, *tasks, after])
    assert len({before, *tasks, after}) == 52


def test_wall_clock_ids_are_unique_and_ordered() -> None:
    ids = [new_id("req") for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_an_ids_time_part_reads_back_as_its_milliseconds() -> None:
    """The dispatch-latency histogram takes a job's submission time from its id (no read)."""
    at = datetime(2026, 4, 26, 9, 0, 0, 123000, tzinfo=UTC)
    assert id_millis(new_id("job", at)) == int(at.timestamp() * 1000)
    assert all(id_millis(job_id) == int(at.timestamp() * 1000) for job_id in new_ids("job", 3, at))
    assert id_millis("job_1") is None and id_millis("not an id") is None


def test_ids_made_now_never_sort_before_earlier_ones_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Also what a thread sees that read the clock, then waited for the lock while another made
    # ids in the next millisecond: "now" is read under the lock and never goes back.
    now_ns = [1_800_000_000_000 * 1_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: now_ns[0])
    array = ids.new_ids("job", 3)
    now_ns[0] -= 5_000_000  # 5 ms back
    later = [ids.new_id("job") for _ in range(3)]
    assert array + later == sorted(array + later) and len(set(array + later)) == 6
    assert ids.id_millis(later[-1]) == 1_800_000_000_000
