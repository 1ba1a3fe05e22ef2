"""The access, billing and webhook command groups end to end: the real ``tanvrit-compute``
binary against a real coordinator process (one per module; each test works on its own objects,
or in its own workspace, so they do not disturb each other), plus help, version and completion.

Each command is checked for what the API really did (read back over HTTP), for ``--json``
printing the API's own JSON, and for a few tables.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import parse_rfc3339
from tests.cli_harness import assert_clean_error, cli_command, cli_env, run_cli
from tests.procs import Coordinator, wait_for
from tests.receiver import Receiver, running_receiver

WS = "ws_00000000000000000000000001"
CONFIG = """
[webhooks]
retry_base_seconds = 0.05
retry_max_seconds = 0.3
timeout_seconds = 5
poll_seconds = 1
"""


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    # Loopback webhook URLs are refused unless the coordinator allows private addresses.
    home = tmp_path_factory.mktemp("groups")
    config = home / "coordinator.toml"
    config.write_text(CONFIG)
    coordinator = Coordinator(home / "coordinator", extra_args=("--config", str(config),
                                                                 "--allow-private-webhooks")).start()
    try:
        yield coordinator
    finally:
        coordinator.stop()


def cli_json(home: Path, coord: Coordinator, *args: str, token: str | None = None) -> Any:
    result = run_cli(home, coord, *args, "--json", token=token)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def cli_ok(home: Path, coord: Coordinator, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(home, coord, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def new_workspace(coord: Coordinator, name: str, plan: str | None = None) -> str:
    with coord.client() as http:
        created = http.post("/v0/workspaces", json={"name": name})
        assert created.status_code == 201, created.text
        workspace: str = created.json()["id"]
        if plan:
            assert http.patch(f"/v0/workspaces/{workspace}", json={"plan": plan}).status_code == 200
    return workspace


# --- workspaces -------------------------------------------------------------------------------

def test_workspaces_list_create_use_update(coord: Coordinator, tmp_path: Path) -> None:
    default = coord.init["workspaceId"]
    table = cli_ok(tmp_path, coord, "workspaces", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "PLAN", "ROLE", "REGION", "CREATED"]
    assert any(line.split()[:4] == [default, "default", "hobby", "owner"] for line in table[1:])

    created = cli_json(tmp_path, coord, "workspaces", "create", "research", "--region", "eu-west")
    assert (created["name"], created["defaultRegion"], created["role"], created["plan"]) == (
        "research", "eu-west", "owner", "hobby")
    with coord.client() as http:
        assert http.get(f"/v0/workspaces/{created['id']}").json() == created
    listed = cli_json(tmp_path, coord, "workspaces", "list")
    assert {default, created["id"]} <= {item["id"] for item in listed["items"]} and "nextCursor" in listed

    # `use` needs a profile to store the choice in; it is checked against the coordinator first.
    login = run_cli(tmp_path, None, "auth", "login", "--token", coord.token, "--url", coord.url)
    assert login.returncode == 0, login.stderr
    used = run_cli(tmp_path, None, "workspaces", "use", created["id"])
    assert used.returncode == 0 and created["id"] in used.stdout, used.stderr
    stored = tomllib.loads((tmp_path / "tanvrit-compute" / "config.toml").read_text())
    assert stored["profiles"]["default"]["workspace"] == created["id"]
    # Commands now act in that workspace: a job submitted through the CLI lands there.
    submitted = run_cli(tmp_path, None, "jobs", "run", "--detach", "--label", "nobody=here", "--json", "--", "true")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    with coord.client() as http:
        assert http.get(f"/v0/jobs/{job_id}", headers={"X-Compute-Workspace": created["id"]}).status_code == 200
        assert http.get(f"/v0/jobs/{job_id}").status_code == 404  # not in the token's default workspace

    updated = run_cli(tmp_path, None, "workspaces", "update", created["id"], "--name", "renamed", "--plan", "payg")
    assert updated.returncode == 0 and f"updated workspace {created['id']}" in updated.stdout, updated.stderr
    with coord.client() as http:
        after = http.get(f"/v0/workspaces/{created['id']}").json()
    assert (after["name"], after["plan"], after["defaultRegion"]) == ("renamed", "payg", "eu-west")

    wrong = run_cli(tmp_path, coord, "workspaces", "update", created["id"], "--name", "x" * 300)
    assert_clean_error(wrong)
    assert "HTTP 4" in wrong.stderr and "name" in wrong.stderr


# --- members ----------------------------------------------------------------------------------

def test_members_invite_list_set_role_remove(coord: Coordinator, tmp_path: Path) -> None:
    workspace = new_workspace(coord, "team-members")
    ws = ("--workspace", workspace)
    invited = cli_ok(tmp_path, coord, *ws, "members", "invite", "ada@example.com", "--role", "admin")
    assert "invited ada@example.com as admin" in invited.stdout
    code = invited.stdout.split("invitation code: ")[1].split()[0]
    assert code.startswith("tcp_inv_")
    assert "shown only once" in invited.stderr

    as_json = cli_json(tmp_path, coord, *ws, "members", "invite", "bob@example.com")
    assert set(as_json) == {"member", "invitation"}
    assert as_json["member"]["email"] == "bob@example.com" and as_json["member"]["status"] == "invited"
    assert as_json["invitation"]["code"].startswith("tcp_inv_") and as_json["invitation"]["expiresAt"]
    bob = as_json["member"]["userId"]

    listed = cli_json(tmp_path, coord, *ws, "members", "list")
    by_email = {item["email"]: item for item in listed["items"]}
    assert by_email["ada@example.com"]["role"] == "admin" and by_email["bob@example.com"]["role"] == "member"
    table = cli_ok(tmp_path, coord, *ws, "members", "list").stdout.splitlines()
    assert table[0].split() == ["USER", "EMAIL", "ROLE", "STATUS", "JOINED"]
    assert any(line.split()[:4] == [bob, "bob@example.com", "member", "invited"] for line in table)

    changed = cli_ok(tmp_path, coord, *ws, "members", "set-role", bob, "admin")
    assert f"{bob} is admin now" in changed.stdout
    with coord.client() as http:
        roles = {m["userId"]: m["role"] for m in http.get(f"/v0/workspaces/{workspace}/members").json()["items"]}
    assert roles[bob] == "admin"

    removed = cli_json(tmp_path, coord, *ws, "members", "remove", bob)
    assert removed == {"userId": bob, "removed": True}
    with coord.client() as http:
        emails = {m["email"] for m in http.get(f"/v0/workspaces/{workspace}/members").json()["items"]}
    assert "bob@example.com" not in emails and "ada@example.com" in emails

    gone = run_cli(tmp_path, coord, *ws, "members", "remove", bob)
    assert_clean_error(gone)
    assert "member_not_found" in gone.stderr and "HTTP 404" in gone.stderr

    # Bob's account exists now: added back, he is a member at once and the code is still printed.
    back = cli_ok(tmp_path, coord, *ws, "members", "invite", "bob@example.com")
    assert f"added bob@example.com as member (user {bob}); they already have an account" in back.stdout
    assert back.stdout.split("invitation code: ")[1].split()[0].startswith("tcp_inv_")
    assert "shown only once" in back.stderr


def test_members_needs_a_workspace_when_there_are_several(coord: Coordinator, tmp_path: Path) -> None:
    new_workspace(coord, "one-more")  # the owner now belongs to several workspaces
    result = run_cli(tmp_path, coord, "members", "list")
    assert_clean_error(result)
    assert "several workspaces" in result.stderr


# --- audit ------------------------------------------------------------------------------------

def test_audit_filters_and_jsonl(coord: Coordinator, tmp_path: Path) -> None:
    workspace = new_workspace(coord, "audited")
    ws = ("--workspace", workspace)
    cli_ok(tmp_path, coord, *ws, "members", "invite", "eve@example.com")
    cli_ok(tmp_path, coord, *ws, "workspaces", "update", workspace, "--name", "audited-2")

    page = cli_json(tmp_path, coord, *ws, "audit", "--since", "1h")
    actions = [item["action"] for item in page["items"]]
    assert "member.invite" in actions and "workspace.update" in actions
    assert set(page["items"][0]) >= {"id", "time", "actor", "action", "target", "result", "status", "errorCode",
                                     "requestId", "sourceAddress", "method", "path"}

    only = cli_json(tmp_path, coord, *ws, "audit", "--action", "member.invite")
    assert [item["action"] for item in only["items"]] == ["member.invite"]
    assert only["items"][0]["result"] == "success" and only["items"][0]["status"] == 201
    both = cli_json(tmp_path, coord, *ws, "audit", "--action", "member.invite", "--action", "workspace.update")
    assert {item["action"] for item in both["items"]} == {"member.invite", "workspace.update"}
    actor = only["items"][0]["actor"]
    assert cli_json(tmp_path, coord, *ws, "audit", "--actor", actor)["items"]
    assert cli_json(tmp_path, coord, *ws, "audit", "--actor", "usr_nobody")["items"] == []
    assert cli_json(tmp_path, coord, *ws, "audit", "--until", "1h")["items"] == []

    table = cli_ok(tmp_path, coord, *ws, "audit", "--action", "member.invite").stdout.splitlines()
    assert table[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "SOURCE", "REQUEST"]
    assert "member.invite" in table[1] and "success" in table[1]

    streamed = cli_ok(tmp_path, coord, *ws, "audit", "--jsonl", "--since", "7d")
    rows = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [row["id"] for row in rows] == [item["id"] for item in page["items"]]
    filtered = cli_ok(tmp_path, coord, *ws, "audit", "--jsonl", "--action", "workspace.update").stdout
    assert [json.loads(line)["action"] for line in filtered.splitlines()] == ["workspace.update"]


# --- tokens -----------------------------------------------------------------------------------

def test_tokens_create_list_revoke(coord: Coordinator, tmp_path: Path) -> None:
    created = cli_json(tmp_path, coord, "tokens", "create", "--name", "ci-deploy", "--expires-in", "30")
    secret = created["token"]
    assert secret.startswith("tcp_pat_") and created["name"] == "ci-deploy" and created["revokedAt"] is None
    expires = parse_rfc3339(created["expiresAt"]) - parse_rfc3339(created["createdAt"])
    assert expires == timedelta(days=30)
    with coord.client(secret) as http:
        assert http.get("/v0/jobs").status_code == 200  # the new PAT works

    printed = cli_ok(tmp_path, coord, "tokens", "create", "--name", "table-one")
    assert "created token pat_" in printed.stdout and "tcp_pat_" in printed.stdout
    assert "shown only once" in printed.stderr

    listed = cli_json(tmp_path, coord, "tokens", "list")
    names = {item["name"]: item for item in listed["items"]}
    assert {"ci-deploy", "table-one"} <= set(names)
    assert all("token" not in item for item in listed["items"])  # never the secrets
    table = cli_ok(tmp_path, coord, "tokens", "list").stdout
    assert table.splitlines()[0].split() == ["ID", "NAME", "USER", "CREATED", "EXPIRES", "REVOKED"]
    assert created["id"] in table and secret not in table

    revoked = cli_json(tmp_path, coord, "tokens", "revoke", created["id"])
    assert revoked["id"] == created["id"] and revoked["revokedAt"] is not None
    with coord.client(secret) as http:
        assert http.get("/v0/jobs").status_code == 401
    refused = run_cli(tmp_path, coord, "jobs", "list", token=secret)
    assert_clean_error(refused)

    unknown = run_cli(tmp_path, coord, "tokens", "revoke", "pat_00000000000000000000000001")
    assert_clean_error(unknown)
    assert "token_not_found" in unknown.stderr


# --- billing ----------------------------------------------------------------------------------

def test_billing_usage(coord: Coordinator, tmp_path: Path) -> None:
    usage = cli_json(tmp_path, coord, "billing", "usage")
    assert set(usage) == {"windowStart", "windowEnd", "cpuSeconds", "gpuSeconds", "gbSeconds", "gpuMemoryGbSeconds",
                         "gpuUtilSeconds", "estimateUsd"}
    now = datetime.now(UTC)
    assert parse_rfc3339(usage["windowStart"]) == now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) \
        or now.day == 1  # the month may have turned over between the two clocks
    assert usage["cpuSeconds"] == 0 and usage["estimateUsd"] == 0

    window = cli_json(tmp_path, coord, "billing", "usage", "--start", "30d", "--end", "1h")
    start, end = parse_rfc3339(window["windowStart"]), parse_rfc3339(window["windowEnd"])
    assert timedelta(days=29) < end - start < timedelta(days=30, hours=1)

    table = cli_ok(tmp_path, coord, "billing", "usage").stdout
    assert "cpu seconds:" in table and "estimate:" in table and "$0.00" in table

    backwards = run_cli(tmp_path, coord, "billing", "usage", "--start", "1h", "--end", "2h")
    assert_clean_error(backwards)
    assert "windowEnd must be after windowStart" in backwards.stderr and "HTTP 422" in backwards.stderr


def test_billing_invoices_by_plan(coord: Coordinator, tmp_path: Path) -> None:
    hobby = run_cli(tmp_path, coord, "--workspace", coord.init["workspaceId"], "billing", "invoices")
    assert_clean_error(hobby)
    assert hobby.stdout == ""
    assert "the hobby plan has no invoices" in hobby.stderr and "(plan_has_no_invoices, HTTP 403" in hobby.stderr

    payg = new_workspace(coord, "paying", plan="payg")
    assert cli_json(tmp_path, coord, "--workspace", payg, "billing", "invoices") == {"items": [], "nextCursor": None}
    table = cli_ok(tmp_path, coord, "--workspace", payg, "billing", "invoices")
    assert table.stdout == "" and "no invoices yet" in table.stderr


def test_billing_limits_get_and_set(coord: Coordinator, tmp_path: Path) -> None:
    ws = ("--workspace", new_workspace(coord, "capped"))
    initial = cli_json(tmp_path, coord, *ws, "billing", "limits")
    assert (initial["softCapUsd"], initial["hardCapUsd"], initial["hardCapReached"]) == (None, None, False)

    too_low = run_cli(tmp_path, coord, *ws, "billing", "limits", "--soft", "100", "--hard", "50")
    assert_clean_error(too_low)
    assert "HTTP 422" in too_low.stderr and "hard" in too_low.stderr.lower()

    changed = cli_json(tmp_path, coord, *ws, "billing", "limits", "--soft", "50", "--hard", "100.5")
    assert (changed["softCapUsd"], changed["hardCapUsd"]) == (50, 100.5)
    assert changed["effectiveAt"] is not None and parse_rfc3339(changed["effectiveAt"])
    with coord.client() as http:
        read = http.get("/v0/billing/limits", headers={"X-Compute-Workspace": ws[1]}).json()
    assert (read["softCapUsd"], read["hardCapUsd"]) == (50, 100.5)

    shown = cli_ok(tmp_path, coord, *ws, "billing", "limits").stdout
    assert "soft cap:" in shown and "$50.00" in shown and "$100.50" in shown
    effective = next(line for line in shown.splitlines() if line.startswith("effective at:"))
    assert effective.split()[-1] == read["effectiveAt"]

    cleared = cli_json(tmp_path, coord, *ws, "billing", "limits", "--hard", "none")
    assert (cleared["softCapUsd"], cleared["hardCapUsd"]) == (50, None)


# --- webhooks ---------------------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


def test_webhooks_create_list_rotate_deliveries_rm(coord: Coordinator, receiver: Receiver, tmp_path: Path) -> None:
    workspace = new_workspace(coord, "hooked")
    ws = ("--workspace", workspace)
    created = cli_json(tmp_path, coord, *ws, "webhooks", "create", "--url", receiver.url + "/hook",
                       "--event", "job.created")
    assert created["url"] == receiver.url + "/hook" and created["events"] == ["job.created"]
    assert created["secret"]
    receiver.secrets.append(created["secret"])
    hook = created["id"]

    printed = cli_ok(tmp_path, coord, *ws, "webhooks", "create", "--url", receiver.url + "/other")
    assert "signing secret: " in printed.stdout and "shown only once" in printed.stderr

    listed = cli_json(tmp_path, coord, *ws, "webhooks", "list")
    assert {item["id"] for item in listed["items"]} >= {hook}
    assert all("secret" not in item for item in listed["items"])
    table = cli_ok(tmp_path, coord, *ws, "webhooks", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "URL", "EVENTS", "CREATED"]

    rotated = cli_json(tmp_path, coord, *ws, "webhooks", "rotate-secret", hook)
    assert rotated["id"] == hook and rotated["secret"] not in (created["secret"], "")
    assert parse_rfc3339(rotated["previousSecretExpiresAt"]) > datetime.now(UTC) + timedelta(hours=23)
    receiver.secrets.append(rotated["secret"])

    assert cli_json(tmp_path, coord, *ws, "webhooks", "deliveries", hook)["items"] == []
    with httpx.Client(base_url=coord.url, timeout=30, headers={"Authorization": f"Bearer {coord.token}",
                                                                "X-Compute-Workspace": workspace}) as http:
        job = http.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": {"nobody": "here"}})
        assert job.status_code == 201, job.text
    wait_for(lambda: receiver.delivered("/hook"), message="the job.created event at the receiver")

    def attempts() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cli_json(tmp_path, coord, *ws, "webhooks", "deliveries", hook)["items"]
        return items if items and items[0]["deliveryState"] == "delivered" else []

    first = wait_for(attempts, message="a delivered attempt in the CLI's deliveries")[0]
    assert first["eventType"] == "job.created" and first["statusCode"] == 204 and first["error"] is None
    assert first["eventId"] == receiver.delivered("/hook")[0].event_id and first["latencyMs"] >= 0
    table = cli_ok(tmp_path, coord, *ws, "webhooks", "deliveries", hook).stdout.splitlines()
    assert table[0].split() == ["ID", "EVENT", "TYPE", "STATE", "STATUS", "LATENCY", "MS", "ERROR", "AT"]
    assert "job.created" in table[1] and "delivered" in table[1] and "204" in table[1]

    removed = cli_json(tmp_path, coord, *ws, "webhooks", "rm", hook)
    assert removed == {"id": hook, "deleted": True}
    assert hook not in {item["id"] for item in cli_json(tmp_path, coord, *ws, "webhooks", "list")["items"]}
    again = run_cli(tmp_path, coord, *ws, "webhooks", "deliveries", hook)
    assert_clean_error(again)
    assert "webhook_not_found" in again.stderr

    public = run_cli(tmp_path, coord, *ws, "webhooks", "create", "--url", "ftp://example.com/hook")
    assert_clean_error(public)
    assert "HTTP 4" in public.stderr


# --- no coordinator needed ----------------------------------------------------------------------

def test_bad_arguments_are_refused_before_any_request(tmp_path: Path) -> None:
    for args in (("billing", "limits", "--soft", "lots"), ("workspaces", "update", WS),
                 ("members", "invite", "a@b.c", "--role", "king"), ("audit", "--since", "last tuesday")):
        assert_clean_error(run_cli(tmp_path, None, "--token", "tcp_pat_x", "--url", "http://127.0.0.1:9", *args),
                           code=2)


def test_help_lists_every_group(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--help")
    assert result.returncode == 0
    for group in ("jobs", "agents", "auth", "workspaces", "members", "tokens", "audit", "billing", "webhooks",
                  "local", "completion"):
        assert f"\n  {group} " in result.stdout
    for group, sub in (("jobs", "run"), ("agents", "rm"), ("auth", "print-token"), ("webhooks", "rotate-secret"),
                       ("members", "set-role"), ("tokens", "revoke"), ("billing", "limits")):
        assert sub in run_cli(tmp_path, None, group, "--help").stdout


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, "tanvrit-compute, version 0.1.0")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(tmp_path: Path, shell: str) -> None:
    result = run_cli(tmp_path, None, "completion", shell)
    assert result.returncode == 0 and len(result.stdout) > 200
    assert "tanvrit-compute" in result.stdout and "_TANVRIT_COMPUTE_COMPLETE" in result.stdout


def test_completion_completes_commands_and_job_ids(coord: Coordinator, tmp_path: Path) -> None:
    def complete(words: str) -> list[str]:
        env = {**cli_env(tmp_path, coord), "_TANVRIT_COMPUTE_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        out = subprocess.run(cli_command(), capture_output=True, text=True, env=env, timeout=30, check=True).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("tanvrit-compute jo") == ["jobs"]
    assert set(complete("tanvrit-compute jobs ")) >= {"run", "list", "get", "logs", "cancel"}
    with coord.client() as http:
        job_id = http.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                             "labels": {"nobody": "completion"}}).json()["id"]
    assert job_id in complete("tanvrit-compute jobs get job_")
