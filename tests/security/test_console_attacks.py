"""The console and its session API against a hostile web page and a hostile browser visit."""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.auth import SESSION_COOKIE
from tests.inproc import running_coordinator


async def test_another_site_cannot_sign_the_browser_in_as_someone_else(tmp_path: Path) -> None:
    """Login CSRF: an HTML form (enctype text/plain) on any site can post a JSON-shaped body
    (the duplicate key absorbs the form's '='). Its navigation's response may set even a
    SameSite=Strict cookie, so the victim would work signed in as the attacker."""
    async with running_coordinator(tmp_path) as coord, httpx.AsyncClient(base_url=coord.url) as browser:
        attackers_pat = coord.token
        forged = '{"pat":"=","pat":"' + attackers_pat + '"}\r\n'
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            answer = await browser.post("/v0/sessions", content=forged,
                                        headers={"Content-Type": content_type, "Origin": "https://evil.example"})
            assert answer.status_code == 415, answer.text
            assert answer.json()["error"]["code"] == "unsupported_media_type"
            assert "set-cookie" not in answer.headers
        assert SESSION_COOKIE not in browser.cookies
        # The console's own sign-in (and any script of this origin) sends JSON and is unaffected.
        assert (await browser.post("/v0/sessions", json={"pat": attackers_pat})).status_code == 201


async def test_every_response_carries_the_security_headers(tmp_path: Path) -> None:
    """API answers, error envelopes and unmatched paths (also under /ui/) are never rendered
    as a page: nosniff, a sandboxing policy, no framing."""
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        job = (await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).json()
        answers = [await owner.get("/v0/jobs"), await owner.get("/v0/nope"), await owner.get("/ui/nope"),
                   await owner.get(f"/v0/jobs/{job['id']}/logs"), await owner.get("/healthz"),
                   await owner.delete("/v0/jobs"), await owner.post("/v0/jobs", content=b"{")]
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            answers.append(await anonymous.get("/v0/jobs"))
        for answer in answers:
            where = f"{answer.request.method} {answer.request.url.path} → {answer.status_code}"
            assert answer.headers.get("x-content-type-options") == "nosniff", where
            policy = answer.headers.get("content-security-policy", "")
            assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, where
        # Answers that show a secret once are kept by no cache.
        minted = await owner.post("/v0/tokens", json={"name": "shown once"})
        assert minted.status_code == 201 and minted.headers["cache-control"] == "no-store"
        # The console's pages keep their own policy, which lets its script run.
        page = await owner.get("/ui/sign-in")
        assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_sign_out_ends_the_session_after_its_user_left_its_workspace(tmp_path: Path) -> None:
    """U signs in to the console with their own PAT of A, is removed from A, and keeps B. The
    session still reaches B, so the console must still show B and signing out must end it
    (it was a 404 that left the cookie alive, while the console looked signed out)."""
    async with running_coordinator(tmp_path) as coord:
        a = coord.workspace_id
        async with coord.client() as owner:
            invited = await owner.post(f"/v0/workspaces/{a}/members", json={"email": "u@example.test", "role": "admin"})
            user_id = invited.json()["member"]["userId"]
            redeemed = await owner.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
        async with coord.client(token=redeemed.json()["token"]["access_token"]) as user:
            b = (await user.post("/v0/workspaces", json={"name": "b"})).json()["id"]
            own_pat = (await user.post("/v0/tokens", json={"name": "own"})).json()["token"]
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            signed_in = await browser.post("/v0/sessions", json={"pat": own_pat})
            assert signed_in.status_code == 201 and signed_in.json()["workspaceId"] == a
            async with coord.client() as owner:
                assert (await owner.delete(f"/v0/workspaces/{a}/members/{user_id}")).status_code == 204
            assert (await browser.get("/v0/jobs", headers={"X-Compute-Workspace": b})).status_code == 200
            assert (await browser.get("/v0/jobs")).status_code == 404  # A: gone
            # The console shows the workspace the user still has, with its sign-out button.
            fleet = await browser.get("/ui/fleet")
            assert fleet.status_code == 200 and 'id="sign-out"' in fleet.text and b in fleet.text
            current = await browser.get("/v0/sessions/current")
            assert current.status_code == 200, current.text
            out = await browser.delete("/v0/sessions/current", headers={"X-CSRF-Token": current.json()["csrfToken"]})
            assert out.status_code == 204, out.text
            secret = signed_in.cookies[SESSION_COOKIE]
        async with httpx.AsyncClient(base_url=coord.url, cookies={SESSION_COOKIE: secret}) as replay:
            assert (await replay.get("/v0/jobs", headers={"X-Compute-Workspace": b})).status_code == 401


async def test_console_forms_are_held_to_the_body_limit_and_redirect_only_within_it(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, max_body_bytes=64 * 1024) as coord, \
            httpx.AsyncClient(base_url=coord.url, timeout=60) as browser:
        # Anyone may post the sign-in form: it is read up to the API's limit, not 16 MiB.
        huge = await browser.post("/ui/sign-in", data={"nonce": "x", "credential": "y" * (1024 * 1024)})
        assert huge.status_code == 413, huge.status_code
        signed_in = await browser.post("/v0/sessions", json={"pat": coord.token})
        csrf = signed_in.json()["csrfToken"]
        for target, expected in (("/ui/jobs", "/ui/jobs"), ("/ui/\r\nSet-Cookie: x=1", "/ui/"),
                                 ("//evil.example/", "/ui/"), ("/ui//evil.example/", "/ui/"),
                                 ("https://evil.example/ui/", "/ui/")):
            switched = await browser.post("/ui/workspace", data={"csrf": csrf, "next": target,
                                                                 "workspace": coord.workspace_id})
            assert switched.status_code == 303, (target, switched.status_code)
            assert switched.headers["location"] == expected, target
