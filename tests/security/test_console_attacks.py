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
        # The console's pages keep their own policy, which lets its script run.
        page = await owner.get("/ui/sign-in")
        assert "script-src 'self'" in page.headers["content-security-policy"]
