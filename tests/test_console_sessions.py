"""Console sessions over real HTTP: sign-in with a PAT or an invitation code, the cookie's
properties, CSRF on changes, expiry, sign-out and revocation; the console's security headers
and its server-side pages (no browser here: tests/test_console_browser.py drives Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from common.clock import ManualClock
from tests.inproc import InProcess, running_coordinator


def _session_client(coord: InProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=coord.url, timeout=30)


async def _sign_in(client: httpx.AsyncClient, **credential: str) -> httpx.Response:
    response = await client.post("/v0/sessions", json=credential)
    return response


async def test_pat_sign_in_sets_an_httponly_strict_cookie_and_csrf_guards_changes(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, _session_client(coord) as browser:
        created = await _sign_in(browser, pat=coord.token)
        assert created.status_code == 201, created.text
        cookie = created.headers["set-cookie"]
        assert cookie.startswith("tanvrit_session=tcp_ses_")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP here; set behind TLS
        body = created.json()
        assert set(body) == {"userId", "workspaceId", "expiresAt", "csrfToken"}
        assert "tcp_ses_" not in created.text  # the secret is only in the cookie

        # The cookie reads like a token; a change without the CSRF token is refused.
        assert (await browser.get("/v0/jobs")).status_code == 200
        refused = await browser.post("/v0/jobs", json={"type": "COMMAND", "command": "echo hi"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_token_invalid"
        wrong = await browser.post("/v0/jobs", json={"type": "COMMAND", "command": "echo hi"},
                                   headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        accepted = await browser.post("/v0/jobs", json={"type": "COMMAND", "command": "echo hi"},
                                      headers={"X-CSRF-Token": body["csrfToken"]})
        assert accepted.status_code == 201, accepted.text

        # The session secret is no bearer token.
        secret = browser.cookies["tanvrit_session"]
        async with coord.client(token=secret) as bearer:
            assert (await bearer.get("/v0/jobs")).json()["error"]["code"] == "invalid_token"

        current = await browser.get("/v0/sessions/current")
        assert current.json()["csrfToken"] == body["csrfToken"]

        # Sign-out revokes the stored session: the old cookie is dead even if replayed.
        out = await browser.delete("/v0/sessions/current", headers={"X-CSRF-Token": body["csrfToken"]})
        assert out.status_code == 204
        assert "tanvrit_session=;" in out.headers["set-cookie"] or 'tanvrit_session="";' in out.headers["set-cookie"]
        async with httpx.AsyncClient(base_url=coord.url, cookies={"tanvrit_session": secret}) as replay:
            dead = await replay.get("/v0/jobs")
            assert dead.status_code == 401 and dead.json()["error"]["code"] == "invalid_session"


async def test_sessions_are_stored_hashed_expire_and_die_with_their_pat(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, console_session_ttl_seconds=3600) as coord:
        clock: ManualClock = coord.clock
        async with coord.client() as owner:
            pat = (await owner.post("/v0/tokens", json={"name": "console"})).json()
        async with _session_client(coord) as browser:
            assert (await _sign_in(browser, pat=pat["token"])).status_code == 201
            secret = browser.cookies["tanvrit_session"]
            rows = coord.store.read_now("SELECT token_hash, kind, parent_id FROM tokens WHERE kind = 'session'", ())
            assert len(rows) == 1 and rows[0]["parent_id"] == pat["id"]
            assert secret not in rows[0]["token_hash"] and len(rows[0]["token_hash"]) == 64

            clock.advance(3599)
            assert (await browser.get("/v0/jobs")).status_code == 200
            clock.advance(2)
            assert (await browser.get("/v0/jobs")).status_code == 401

            assert (await _sign_in(browser, pat=pat["token"])).status_code == 201
            assert (await browser.get("/v0/jobs")).status_code == 200
            async with coord.client() as owner:
                assert (await owner.delete(f"/v0/tokens/{pat['id']}")).status_code == 200
            assert (await browser.get("/v0/jobs")).status_code == 401


async def test_invitation_sign_in_and_bad_credentials(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, _session_client(coord) as browser:
        async with coord.client() as owner:
            invited = await owner.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                       json={"email": "new@example.test", "role": "member"})
        code = invited.json()["invitation"]["code"]
        signed = await _sign_in(browser, invitationCode=code)
        assert signed.status_code == 201, signed.text
        assert signed.json()["userId"] == invited.json()["member"]["userId"]
        workspace = await browser.get(f"/v0/workspaces/{coord.workspace_id}")
        assert workspace.json()["role"] == "member"
        # Members cannot drain agents whatever the console shows: the API decides.
        csrf = signed.json()["csrfToken"]
        drained = await browser.post("/v0/agents/agt_x:drain", headers={"X-CSRF-Token": csrf})
        assert drained.status_code == 403

        async with _session_client(coord) as other:
            again = await _sign_in(other, invitationCode=code)
            assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_invitation"
            assert (await _sign_in(other, pat="tcp_pat_nope")).status_code == 401
            assert (await _sign_in(other)).status_code == 422
            assert (await _sign_in(other, pat=coord.token, invitationCode=code)).status_code == 422
            assert (await other.post("/v0/sessions", content=b"{",
                                     headers={"Content-Type": "application/json"})).status_code == 400


async def test_console_pages_sign_in_flow_and_security_headers(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, _session_client(coord) as browser:
        assert (await browser.get("/ui/fleet")).headers["location"] == "/ui/sign-in"
        form = await browser.get("/ui/sign-in")
        csp = form.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert form.headers["x-frame-options"] == "DENY"
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce is not None
        # A sign-in form posted without the nonce cookie (login CSRF) is refused.
        async with _session_client(coord) as forged:
            refused = await forged.post("/ui/sign-in", data={"nonce": nonce.group(1), "credential": coord.token})
            assert refused.status_code == 400 and "tanvrit_session" not in refused.headers.get("set-cookie", "")
        wrong = await browser.post("/ui/sign-in", data={"nonce": nonce.group(1), "credential": "tcp_pat_wrong"})
        assert wrong.status_code == 401 and "invalid, expired or revoked" in wrong.text
        form = await browser.get("/ui/sign-in")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce is not None
        signed = await browser.post("/ui/sign-in", data={"nonce": nonce.group(1), "credential": coord.token})
        assert signed.status_code == 303 and signed.headers["location"] == "/ui/fleet"
        for path in ("/ui/fleet", "/ui/jobs", "/ui/usage", "/ui/access", "/ui/jobs/rows", "/ui/fleet/rows"):
            page = await browser.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert page.headers["cache-control"] == "no-store"
            assert "<script>" not in page.text  # only <script src=...>: the CSP allows no inline script
        script = await browser.get("/ui/static/console.js")
        assert script.status_code == 200 and "EventSource" in script.text
        fleet = await browser.get("/ui/fleet")
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', fleet.text)
        assert csrf is not None
        # A form post without its CSRF token changes nothing; with it, sign-out works.
        assert (await browser.post("/ui/jobs", data={"command": "echo x"})).status_code == 403
        out = await browser.post("/ui/sign-out", data={"csrf": csrf.group(1)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
        assert (await browser.get("/ui/fleet")).headers["location"] == "/ui/sign-in"


async def test_daily_usage_covers_the_month_so_far(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        month = await owner.get("/v0/billing/usage/daily")
        assert month.status_code == 200, month.text
        body = month.json()
        assert body["month"] == "2026-04"
        assert [day["date"] for day in body["days"]][:2] == ["2026-04-01", "2026-04-02"]
        assert body["days"][-1]["date"] == "2026-04-26"  # the injected clock's today
        assert all(day["cpuSeconds"] == 0 for day in body["days"])
        march = (await owner.get("/v0/billing/usage/daily", params={"month": "2026-03"})).json()
        assert len(march["days"]) == 31
        bad = await owner.get("/v0/billing/usage/daily", params={"month": "2026-13"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "month"


async def _ui_sign_in(browser: httpx.AsyncClient, credential: str) -> None:
    form = await browser.get("/ui/sign-in")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    signed = await browser.post("/ui/sign-in", data={"nonce": nonce.group(1), "credential": credential})
    assert signed.status_code == 303, signed.text


async def test_the_workspace_switch_scopes_every_page_through_the_api(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, _session_client(coord) as browser:
        async with coord.client() as owner:
            second = (await owner.post("/v0/workspaces", json={"name": "second-space"})).json()["id"]
            here = (await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "echo first-space-job"})).json()
            there = (await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "echo second-space-job"},
                                      headers={"X-Compute-Workspace": second})).json()
        await _ui_sign_in(browser, coord.token)
        jobs = (await browser.get("/ui/jobs")).text
        assert here["id"] in jobs and there["id"] not in jobs
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', jobs)
        assert csrf is not None
        forged = await browser.post("/ui/workspace", data={"workspace": second})
        assert forged.status_code == 403 and "tanvrit_workspace" not in forged.headers.get("set-cookie", "")
        assert '<input type="hidden" name="next" value="/ui/jobs">' in jobs
        switched = await browser.post("/ui/workspace", data={"workspace": second, "csrf": csrf.group(1),
                                                             "next": "/ui/jobs"})
        assert switched.status_code == 303 and switched.headers["location"] == "/ui/jobs"
        elsewhere = await browser.post("/ui/workspace", data={"workspace": second, "csrf": csrf.group(1),
                                                              "next": "//evil.example/ui/"})
        assert elsewhere.headers["location"] == "/ui/"  # never off the console
        jobs = (await browser.get("/ui/jobs")).text
        assert there["id"] in jobs and here["id"] not in jobs
        assert re.search(rf'<option value="{second}" selected>second-space</option>', jobs)
        # The page's own log stream (an EventSource: no headers) acts in the chosen workspace too.
        log = await browser.get(f"/v0/jobs/{there['id']}/logs")
        assert log.status_code == 200, log.text
        # A workspace the user does not belong to is not reachable by naming it.
        await browser.post("/ui/workspace", data={"workspace": "ws_someone_elses", "csrf": csrf.group(1)})
        jobs = (await browser.get("/ui/jobs")).text
        assert here["id"] in jobs and there["id"] not in jobs


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found is not None
    return found.group(1)


async def test_console_forms_filter_jobs_and_manage_members_tokens_webhooks_and_agents(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, allow_private_webhooks=True) as coord, _session_client(coord) as browser:
        agent_id, agent_http = await coord.register_agent("form-agent")
        await agent_http.aclose()  # registered is enough: an idle agent drains at once
        async with coord.client() as owner:
            queued = (await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "echo a",
                                                          "labels": {"pool": "blue"}})).json()
            cancelled = (await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "echo b"})).json()
            await owner.post(f"/v0/jobs/{cancelled['id']}:cancel")
        await _ui_sign_in(browser, coord.token)
        csrf = _csrf((await browser.get("/ui/jobs")).text)

        # Filters pass through to the API: state, labels, creation time (taken as UTC).
        by_state = (await browser.get("/ui/jobs", params={"state": "CANCELLED"})).text
        assert cancelled["id"] in by_state and queued["id"] not in by_state
        by_label = (await browser.get("/ui/jobs", params={"label": "pool=blue"})).text
        assert queued["id"] in by_label and cancelled["id"] not in by_label
        later = (await browser.get("/ui/jobs", params={"after": "2026-04-26T10:00"})).text
        assert queued["id"] not in later and "No jobs match." in later
        earlier = (await browser.get("/ui/jobs", params={"after": "2026-04-26T08:00"})).text
        assert queued["id"] in earlier
        bad = await browser.get("/ui/jobs", params={"label": "no-equals-sign"})
        assert bad.status_code == 200 and "label filters look like key=value" in bad.text

        # Members: invite (the code is shown once), change a role.
        invited = await browser.post("/ui/access/members", data={"csrf": csrf, "email": "x@example.test",
                                                                  "role": "member"})
        assert invited.status_code == 200 and re.search(r'id="secret-value">tcp_inv_', invited.text)
        async with coord.client() as owner:
            members = (await owner.get(f"/v0/workspaces/{coord.workspace_id}/members")).json()["items"]
            user_id = next(m["userId"] for m in members if m["email"] == "x@example.test")
        changed = await browser.post(f"/ui/access/members/{user_id}/role", data={"csrf": csrf, "role": "admin"})
        assert changed.status_code == 303
        refused = await browser.post(f"/ui/access/members/{user_id}/role", data={"csrf": csrf, "role": "king"})
        assert refused.status_code == 422 and 'class="error"' in refused.text

        # Tokens: create (secret shown once), revoke.
        created = await browser.post("/ui/access/tokens", data={"csrf": csrf, "name": "t1", "days": "7"})
        secret = re.search(r'id="secret-value">(tcp_pat_[^<]+)<', created.text)
        assert secret is not None
        async with coord.client() as owner:
            token = next(t for t in (await owner.get("/v0/tokens")).json()["items"] if t["name"] == "t1")
            assert token["expiresAt"] is not None
        assert (await browser.post(f"/ui/access/tokens/{token['id']}/revoke", data={"csrf": csrf})).status_code == 303
        async with coord.client(secret.group(1)) as revoked:
            assert (await revoked.get("/v0/jobs")).status_code == 401

        # Webhooks: add, delete.
        added = await browser.post("/ui/access/webhooks", data={"csrf": csrf, "url": "http://127.0.0.1:9/h",
                                                                 "events": ["job.created", "job.terminal"]})
        assert added.status_code == 200 and 'id="secret-value"' in added.text
        async with coord.client() as owner:
            hook = (await owner.get("/v0/webhooks")).json()["items"][0]
        assert hook["events"] == ["job.created", "job.terminal"]
        assert (await browser.post(f"/ui/access/webhooks/{hook['id']}/delete", data={"csrf": csrf})).status_code == 303

        # Agents: drain, resume, remove; an unknown action is a 404 page, not a traceback.
        for action, expected in (("drain", "DRAIN"), ("resume", "READY")):
            assert (await browser.post(f"/ui/agents/{agent_id}/{action}", data={"csrf": csrf})).status_code == 303
            async with coord.client() as owner:
                assert (await owner.get(f"/v0/agents/{agent_id}")).json()["state"].startswith(expected)
        assert (await browser.post(f"/ui/agents/{agent_id}/explode", data={"csrf": csrf})).status_code == 404
        assert (await browser.post(f"/ui/agents/{agent_id}/remove", data={"csrf": csrf})).status_code == 303
        async with coord.client() as owner:
            assert (await owner.get(f"/v0/agents/{agent_id}")).status_code == 404

