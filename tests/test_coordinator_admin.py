"""``tanvrit-coordinator backup`` and ``admin``: run on the coordinator host against its data dir,
while the real coordinator serves, and what they leave behind (a restorable copy, audited tokens)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.cli_harness import assert_clean_error
from tests.procs import AgentProc, Coordinator, wait_for


def _coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_backup_taken_while_jobs_arrive_holds_them_and_restores(coordinator: Coordinator, tmp_path: Path) -> None:
    acknowledged: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with coordinator.client() as http:
                while not stop.is_set():
                    answer = http.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
                    assert answer.status_code == 201, answer.text
                    acknowledged.append(answer.json()["id"])
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    writer = threading.Thread(target=submit)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 5, message="jobs being submitted")
        before = list(acknowledged)  # every one of these was committed before the backup began
        result = _coordinator("backup", "--data-dir", str(coordinator.data_dir), "--to",
                              str(tmp_path / "backups" / "store.sqlite3"), "--json")
        wait_for(lambda: len(acknowledged) >= len(before) + 3, message="more jobs after the backup")
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not errors, errors
    assert result.returncode == 0, result.stderr
    taken = json.loads(result.stdout)
    backup = Path(taken["path"])
    assert backup.stat().st_mode & 0o777 == 0o600 and taken["schemaVersion"] > 0
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kept = {row[0] for row in db.execute("SELECT id FROM jobs")}
    assert set(before) <= kept

    # Restore as docs/operations.md says: the backup becomes the store of a coordinator.
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copyfile(backup, restored_dir / "coordinator.sqlite3")
    restored = Coordinator(restored_dir).start()
    try:
        assert not restored.init, "a restored store is not initialised again"
        with httpx.Client(base_url=restored.url, headers={"Authorization": f"Bearer {coordinator.token}"},
                          timeout=30) as http:
            for job_id in (before[0], before[-1]):
                assert http.get(f"/v0/jobs/{job_id}").status_code == 200
    finally:
        restored.stop()


def test_backup_refuses_to_overwrite_the_store_and_needs_one(tmp_path: Path) -> None:
    missing = _coordinator("backup", "--data-dir", str(tmp_path / "nothing"), "--to", str(tmp_path / "b.sqlite3"))
    assert_clean_error(missing)
    assert "no coordinator store in" in missing.stderr and "tanvrit-coordinator init" in missing.stderr
    assert _coordinator("init", "--data-dir", str(tmp_path / "data")).returncode == 0
    onto_itself = _coordinator("backup", "--data-dir", str(tmp_path / "data"), "--to",
                               str(tmp_path / "data" / "coordinator.sqlite3"))
    assert_clean_error(onto_itself)
    assert "must not overwrite the live store" in onto_itself.stderr


def test_minted_tokens_work_and_are_audited(coordinator: Coordinator, tmp_path: Path) -> None:
    data_dir = str(coordinator.data_dir)
    minted = _coordinator("admin", "mint-token", "--data-dir", data_dir, "--json")
    assert minted.returncode == 0, minted.stderr
    pat = json.loads(minted.stdout)
    assert pat["token"].startswith("tcp_pat_") and pat["email"] == "owner@localhost"
    registration = _coordinator("admin", "registration-token", "--data-dir", data_dir, "--json")
    assert registration.returncode == 0, registration.stderr
    reg = json.loads(registration.stdout)
    assert reg["token"].startswith("tcp_reg_")

    # The minted PAT acts as the owner; the minted registration token registers an agent.
    workspace = coordinator.init["workspaceId"]
    with coordinator.client(pat["token"]) as http:
        audit = http.get(f"/v0/workspaces/{workspace}/audit").json()["items"]
        by_action = {row["action"]: row for row in audit}
        assert by_action["admin.token.create"]["target"] == pat["tokenId"]
        assert by_action["admin.registration_token.create"]["target"] == reg["tokenId"]
        assert by_action["admin.token.create"]["actor"].startswith("host-admin:")
    coordinator.init["registrationToken"] = reg["token"]
    agent = AgentProc(coordinator, tmp_path / "agent").start()
    try:
        assert agent.agent_id.startswith("agt_")
    finally:
        agent.stop()


def test_admin_errors_are_messages(tmp_path: Path) -> None:
    assert _coordinator("init", "--data-dir", str(tmp_path)).returncode == 0
    nobody = _coordinator("admin", "mint-token", "--data-dir", str(tmp_path), "--owner", "bob@example.com")
    assert_clean_error(nobody)
    assert "bob@example.com is not an owner of workspace ws_" in nobody.stderr
    elsewhere = _coordinator("admin", "registration-token", "--data-dir", str(tmp_path), "--workspace", "ws_nope")
    assert_clean_error(elsewhere)
    assert "no workspace ws_nope in this store" in elsewhere.stderr


def test_an_older_coordinator_refuses_a_store_a_newer_one_migrated(tmp_path: Path) -> None:
    assert _coordinator("init", "--data-dir", str(tmp_path)).returncode == 0
    with sqlite3.connect(tmp_path / "coordinator.sqlite3") as db:
        db.execute("PRAGMA user_version = 9999")
    for args in (("serve", "--bind", "127.0.0.1:0"), ("admin", "mint-token")):
        refused = _coordinator(*args, "--data-dir", str(tmp_path))
        assert_clean_error(refused)
        assert "the store's schema version 9999 is newer than this coordinator's" in refused.stderr
    with sqlite3.connect(tmp_path / "coordinator.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (9999,)
