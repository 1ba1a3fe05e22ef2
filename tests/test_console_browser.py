"""The web console in a real browser: the distribution's headless Chromium, driven by Playwright,
against a real coordinator and real agents on loopback ports.

``make test`` installs Chromium (``apt-get install chromium``) when ``/usr/bin/chromium`` is
missing. With ``TANVRIT_SCREENSHOTS=1`` the tests also save a screenshot of each page to
``docs/console/`` (the README shows them); without it they write nothing into the tree.

Waits use Playwright's locator assertions, which poll with a deadline: no sleeps. The pages'
Content-Security-Policy is left on (no ``bypass_csp``), so the console is tested as served.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
DEADLINE_MS = 30_000
expect.set_options(timeout=DEADLINE_MS)  # generous: CI machines are small and noisy

XSS_SCRIPT = '<script>window.__xss = "script"</script>'
XSS_IMG = '<img src=x onerror="window.__xss = 1">'


def screenshot(page: Page, name: str) -> None:
    if os.environ.get("TANVRIT_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("the console tests need the distribution's Chromium at /usr/bin/chromium: "
                    "`make test` installs it, or run `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """Agents heartbeat every 0.3 s (drains settle fast); webhooks may point at loopback, so
    the tests can register ones whose deliveries fail at once."""
    data_dir = tmp_path_factory.mktemp("console") / "coordinator"
    data_dir.mkdir()
    config = data_dir / "coordinator.toml"
    config.write_text("[server]\nheartbeat_interval_seconds = 0.3\n")
    coord = Coordinator(data_dir, extra_args=("--config", str(config), "--allow-private-webhooks")).start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture(scope="module")
def worker(coordinator: Coordinator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """The agent that runs the tests' jobs (labelled pool=console)."""
    agent = AgentProc(coordinator, tmp_path_factory.mktemp("worker") / "agent", labels=("pool=console",)).start()
    try:
        agent_id = agent.agent_id
        with coordinator.client() as api:
            wait_for(lambda: api.get(f"/v0/agents/{agent_id}").json()["state"] == "READY", message="worker ready")
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context(viewport={"width": 1280, "height": 800})
    created.set_default_timeout(DEADLINE_MS)
    try:
        yield created
    finally:
        created.close()


@pytest.fixture
def gate_dir() -> Iterator[Path]:
    """A directory a job (perhaps under another user) can see, for files that release its steps."""
    directory = Path(tempfile.mkdtemp(prefix="tanvrit-console-gates-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sign_in(page: Page, base: str, credential: str) -> None:
    page.goto(f"{base}/ui/sign-in")
    page.fill("#credential", credential)
    page.click("#sign-in")
    expect(page).to_have_url(f"{base}/ui/fleet")


def invite(coordinator: Coordinator, email: str, role: str) -> str:
    with coordinator.client() as api:
        invited = api.post(f"/v0/workspaces/{coordinator.init['workspaceId']}/members",
                           json={"email": email, "role": role})
    assert invited.status_code == 201, invited.text
    return str(invited.json()["invitation"]["code"])


# --- sign-in ---------------------------------------------------------------------------------

def test_sign_in_and_sign_out(coordinator: Coordinator, context: BrowserContext) -> None:
    base = coordinator.url
    assert f"Web console: {base}/ui/" in coordinator.log()  # `serve` prints where the console is
    page = context.new_page()
    page.goto(f"{base}/ui/")
    expect(page).to_have_url(f"{base}/ui/sign-in")
    screenshot(page, "sign-in")
    page.fill("#credential", "tcp_pat_not-a-real-token")
    page.click("#sign-in")
    expect(page.locator("#error")).to_have_text("the token is invalid, expired or revoked")

    sign_in(page, base, coordinator.token)
    expect(page.locator("#role")).to_have_text("owner")
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    session = cookies["tanvrit_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    # Page scripts cannot read the session, and it never appears in a URL.
    assert "tcp_" not in page.evaluate("document.cookie")
    assert "tcp_" not in page.url

    page.click("#sign-out")
    expect(page).to_have_url(f"{base}/ui/sign-in")
    assert "tanvrit_session" not in {cookie["name"] for cookie in context.cookies()}
    page.goto(f"{base}/ui/jobs")
    expect(page).to_have_url(f"{base}/ui/sign-in")
    # The old session was revoked on the server, not only forgotten by the browser.
    replay = httpx.get(f"{base}/v0/jobs", cookies={"tanvrit_session": session["value"]})
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "invalid_session"


def test_member_signs_in_with_an_invitation_and_sees_no_admin_controls(
    coordinator: Coordinator, worker: AgentProc, context: BrowserContext,
) -> None:
    base = coordinator.url
    page = context.new_page()
    sign_in(page, base, invite(coordinator, "member-ui@example.test", "member"))
    expect(page.locator("#role")).to_have_text("member")
    expect(page.locator(f'tr[data-agent="{worker.agent_id}"]')).to_be_visible()
    assert page.locator("#agents button").count() == 0
    assert page.get_by_role("columnheader", name="Admin").count() == 0
    page.goto(f"{base}/ui/usage")
    expect(page.locator("#caps")).to_be_visible()
    assert page.locator("#caps-form").count() == 0
    page.goto(f"{base}/ui/access")
    for form in ("#token-form", "#invite-form", "#webhook-form"):
        assert page.locator(form).count() == 0
    # The controls are only hidden; the API refuses a member's drain whatever the page sends.
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    status = page.evaluate(
        """async ([agent, csrf]) => (await fetch(`/v0/agents/${agent}:drain`,
               {method: "POST", headers: {"X-CSRF-Token": csrf}})).status""",
        [worker.agent_id, csrf],
    )
    assert status == 403
    with coordinator.client() as api:
        assert api.get(f"/v0/agents/{worker.agent_id}").json()["state"] == "READY"


# --- jobs and the live log -------------------------------------------------------------------

def _job(coordinator: Coordinator, job_id: str) -> dict[str, Any]:
    with coordinator.client() as api:
        found: dict[str, Any] = api.get(f"/v0/jobs/{job_id}").json()
        return found


def _log_text(coordinator: Coordinator, job_id: str) -> str:
    with coordinator.client() as api:
        return api.get(f"/v0/jobs/{job_id}/logs").text


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_a_job_submitted_through_the_api_appears_live_and_its_log_streams_to_the_end(
    coordinator: Coordinator, worker: AgentProc, context: BrowserContext, gate_dir: Path,
) -> None:
    base = coordinator.url
    page = context.new_page()
    sign_in(page, base, coordinator.token)
    page.goto(f"{base}/ui/jobs")
    marker = page.locator("#jobs")
    expect(marker).to_be_visible()
    loaded_at = page.evaluate("performance.timeOrigin")

    gate = gate_dir / "go"
    command = ("printf '\\033[31mred alert\\033[0m plain \\033[1;32mbold green\\033[0m\\n'; echo first-part; "
               # An escape sequence cut in two: its first half reaches the page before the gate opens.
               "printf '\\033[3'; "
               f"while [ ! -e {gate} ]; do sleep 0.05; done; printf '4mblue\\033[0m\\n'; echo second-part; "
               "i=0; while [ $i -lt 60 ]; do echo \"line $i\"; i=$((i+1)); done; echo last-line")
    with coordinator.client() as api:
        created = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "name": "live-demo",
                                             "labels": {"pool": "console"}, "timeoutSeconds": 120,
                                             "resources": {"cpus": 0.5, "memoryMb": 256}})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_be_visible()  # appeared without a reload...
    expect(row.locator(".state")).to_have_text("RUNNING")  # ...and changes state live
    assert page.evaluate("performance.timeOrigin") == loaded_at, "the page must not have reloaded"

    row.locator("a").first.click()
    expect(page).to_have_url(f"{base}/ui/jobs/{job_id}")
    log = page.locator("#log")
    expect(log).to_contain_text("first-part")
    # ANSI colours became classes on text spans; the escape codes are gone.
    expect(log.locator("span.fg-red")).to_have_text("red alert")
    expect(log.locator("span.fg-green.ansi-bold")).to_have_text("bold green")
    # While it runs, the Fleet shows what it takes of its agent.
    fleet = context.new_page()
    fleet.goto(f"{base}/ui/fleet")
    expect(fleet.locator(f'tr[data-agent="{worker.agent_id}"] .in-use')).to_have_text("in use: 0.5 CPU · 256 MB")
    screenshot(fleet, "fleet")
    fleet.close()
    gate.touch()
    expect(page.locator("#log-status")).to_have_text("finished: SUCCEEDED (exit 0)")
    expect(log).to_contain_text("last-line")
    expect(log.locator("span.fg-blue")).to_have_text("blue")
    assert log.text_content() == ANSI.sub("", _log_text(coordinator, job_id))
    expect(page.locator("#job-state")).to_contain_text("SUCCEEDED")  # the fields follow too, no reload
    page.reload()
    expect(page.locator("#log-status")).to_have_text("finished: SUCCEEDED (exit 0)")
    expect(log).to_have_text(ANSI.sub("", _log_text(coordinator, job_id)))
    log.evaluate("element => { element.scrollTop = 0; }")  # the coloured lines, for the screenshot
    screenshot(page, "job")


class DroppingProxy:
    """A loopback TCP forwarder whose open connections the test can cut, as a flaky network
    would: the browser sees its event stream end mid-job and must resume by itself."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)  # so that close() is noticed without closing under accept()
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self.lock:
            dropping, self.open = self.open, []
        for connection in dropping:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def close(self) -> None:
        self.closed = True
        self.thread.join(timeout=10)
        self.listener.close()
        self.drop()


def test_the_log_resumes_after_a_dropped_connection_without_repeating_or_losing_a_byte(
    coordinator: Coordinator, worker: AgentProc, context: BrowserContext, gate_dir: Path,
) -> None:
    proxy = DroppingProxy(coordinator.url)
    try:
        page = context.new_page()
        sign_in(page, proxy.url, coordinator.token)
        first, second = gate_dir / "one", gate_dir / "two"
        # Multi-byte characters on both sides of the cut: the offsets are bytes.
        command = (f"echo 'before the cut: héllo ✓'; while [ ! -e {first} ]; do sleep 0.05; done; "
                   f"echo 'while cut: ünïcode ✓'; while [ ! -e {second} ]; do sleep 0.05; done; echo 'after: done ✓'")
        with coordinator.client() as api:
            job_id = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "labels": {"pool": "console"},
                                                "timeoutSeconds": 120}).json()["id"]
        page.goto(f"{proxy.url}/ui/jobs/{job_id}")
        log = page.locator("#log")
        expect(log).to_have_text("before the cut: héllo ✓\n")
        proxy.drop()
        first.touch()
        wait_for(lambda: "while cut" in _log_text(coordinator, job_id), message="the second line logged")
        expect(log).to_have_attribute("data-connects", re.compile(r"^[2-9]|\d\d"))
        second.touch()
        expect(page.locator("#log-status")).to_have_text("finished: SUCCEEDED (exit 0)")
        expected = "before the cut: héllo ✓\nwhile cut: ünïcode ✓\nafter: done ✓\n"
        assert _log_text(coordinator, job_id) == expected
        assert log.text_content() == expected
    finally:
        proxy.close()


def test_submit_and_cancel_from_the_page(coordinator: Coordinator, context: BrowserContext) -> None:
    base = coordinator.url
    page = context.new_page()
    sign_in(page, base, coordinator.token)
    page.goto(f"{base}/ui/jobs")
    page.click("text=Submit a command")
    page.fill("#submit-command", "sleep 600")
    page.fill('input[name="labels"]', "pool=nowhere")
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/ui/jobs/job_"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-state")).to_contain_text("QUEUED")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_contain_text("CANCELLED")
    with coordinator.client() as api:
        assert api.get(f"/v0/jobs/{job_id}").json()["state"] == "CANCELLED"
        waiting = api.post("/v0/jobs", json={"type": "COMMAND", "command": "nvidia-smi", "name": "train",
                                             "labels": {"pool": "gpu-large"}}).json()
    page.goto(f"{base}/ui/jobs")
    queued = page.locator(f'tr[data-job="{waiting["id"]}"]')
    expect(queued.locator(".state")).to_have_text("QUEUED")
    # The queue reason, where the API gives one, is shown beside the state (the row refreshes live).
    reason = _job(coordinator, waiting["id"]).get("reason")
    if reason:
        expect(queued.locator(".reason")).to_have_text(reason)
    screenshot(page, "jobs")


# --- fleet -----------------------------------------------------------------------------------

def test_an_admin_drains_and_resumes_an_agent_from_the_page(
    coordinator: Coordinator, context: BrowserContext, tmp_path: Path,
) -> None:
    agent = AgentProc(coordinator, tmp_path / "drainee", labels=("pool=drain-me",)).start()
    try:
        agent_id = agent.agent_id
        base = coordinator.url
        page = context.new_page()
        sign_in(page, base, coordinator.token)
        row = page.locator(f'tr[data-agent="{agent_id}"]')
        expect(row.locator(".state")).to_have_text("READY")
        expect(row.locator(".label", has_text="pool=")).to_have_text("pool=drain-me")
        page.click(f"#drain-{agent_id}")
        expect(page).to_have_url(f"{base}/ui/fleet")
        expect(row.locator(".state")).to_have_text(re.compile("^DRAIN(ING|ED)$"))
        with coordinator.client() as api:
            assert api.get(f"/v0/agents/{agent_id}").json()["state"] in {"DRAINING", "DRAINED"}
        expect(row.locator(".state")).to_have_text("DRAINED")  # idle: settles without a reload
        page.click(f"#resume-{agent_id}")
        expect(row.locator(".state")).to_have_text("READY")
        with coordinator.client() as api:
            assert api.get(f"/v0/agents/{agent_id}").json()["state"] == "READY"
    finally:
        agent.stop()


# --- usage -----------------------------------------------------------------------------------

def _hour_ms(moment: datetime) -> int:
    return int(moment.replace(minute=0, second=0, microsecond=0).timestamp()) * 1000


def test_the_usage_chart_shows_a_workspace_with_known_usage(
    coordinator: Coordinator, context: BrowserContext,
) -> None:
    # Known usage, written where the meter's hourly roll-ups go: 1.5 CPU-hours and 2 GPU-hours
    # on the 1st, 0.5 CPU-hours and 3 GB-hours in the current hour.
    now = datetime.now(UTC)
    first = _hour_ms(now.replace(day=1, hour=0))
    current = _hour_ms(now)
    workspace = coordinator.init["workspaceId"]
    rows = [(first, 5400, 7200, 0), (current, 1800, 0, 10800)] if first != current else [(first, 7200, 7200, 10800)]
    with sqlite3.connect(coordinator.data_dir / "coordinator.sqlite3", timeout=30) as db:
        db.executemany(
            """INSERT INTO usage_hourly (workspace_id, hour_start, gpu_model, cpu_micros, gpu_micros, gb_micros)
               VALUES (?, ?, 'TestGPU', ?, ?, ?)
               ON CONFLICT (workspace_id, hour_start, gpu_model) DO UPDATE SET cpu_micros = cpu_micros +
               excluded.cpu_micros, gpu_micros = gpu_micros + excluded.gpu_micros, gb_micros = gb_micros +
               excluded.gb_micros""",
            [(workspace, hour, cpu * 1_000_000, gpu * 1_000_000, gb * 1_000_000) for hour, cpu, gpu, gb in rows],
        )
    with coordinator.client() as api:
        daily = {day["date"][-2:]: day for day in api.get("/v0/billing/usage/daily").json()["days"]}
        summary = api.get("/v0/billing/usage").json()
    expected_cpu = {datetime.fromtimestamp(hour / 1000, UTC).strftime("%d"): 0.0 for hour, *_ in rows}
    for hour, cpu, _gpu, _gb in rows:
        expected_cpu[datetime.fromtimestamp(hour / 1000, UTC).strftime("%d")] += cpu
    for day, cpu in expected_cpu.items():
        assert daily[day]["cpuSeconds"] >= cpu  # the API sees it (jobs of other tests may add a little)

    base = coordinator.url
    page = context.new_page()
    sign_in(page, base, coordinator.token)
    page.goto(f"{base}/ui/usage")
    chart = page.locator("#chart-cpu svg")
    days_in_chart = chart.locator("rect.bar")
    expect(days_in_chart.first).to_be_attached()
    for day in expected_cpu:
        bar = chart.locator(f'rect.bar[data-day="{day}"]')
        assert float(bar.get_attribute("data-value") or "nan") == daily[day]["cpuSeconds"]
        assert float(bar.get_attribute("height") or 0) > 0
    gpu_first = page.locator(f'#chart-gpu rect.bar[data-day="{now.replace(day=1).strftime("%d")}"]')
    assert float(gpu_first.get_attribute("data-value") or "nan") == daily["01"]["gpuSeconds"] >= 7200
    # The tallest bar reaches the top of the axis scale; a day without usage has no height.
    heights = [float(h) for h in days_in_chart.evaluate_all("bars => bars.map(b => b.getAttribute('height'))")]
    assert len(heights) >= 28 and max(heights) > 0 and min(heights) == 0
    expect(page.locator("#estimate-usd")).to_have_text(f"${float(summary['estimateUsd']):.2f}")

    # An admin sets the caps from the page; the API holds them.
    page.fill("#soft-input", "50")
    page.fill("#hard-input", "80.5")
    page.click("#save-caps")
    expect(page).to_have_url(f"{base}/ui/usage")
    expect(page.locator("#soft-cap")).to_have_text("$50.00")
    expect(page.locator("#hard-cap")).to_contain_text("$80.50")
    with coordinator.client() as api:
        limits = api.get("/v0/billing/limits").json()
    assert (limits["softCapUsd"], limits["hardCapUsd"]) == (50, 80.5)
    screenshot(page, "usage")
    page.fill("#soft-input", "lots")
    page.click("#save-caps")
    expect(page.locator("#error")).to_contain_text("not an amount")


# --- access ----------------------------------------------------------------------------------

def test_access_page_creates_a_token_whose_secret_is_shown_once(
    coordinator: Coordinator, context: BrowserContext,
) -> None:
    base = coordinator.url
    page = context.new_page()
    sign_in(page, base, coordinator.token)
    page.goto(f"{base}/ui/access")
    # A webhook from the page; a job's creation is then delivered to it (and fails: nothing listens).
    page.fill('#webhook-form input[name="url"]', "http://127.0.0.1:9/hooks/ci")
    page.check('#webhook-form input[value="job.created"]')
    page.click("#webhook-form button")
    expect(page.locator("#secret-value")).to_have_text(re.compile(r"^\S{16,}$"))
    with coordinator.client() as api:
        hook = api.get("/v0/webhooks").json()["items"][0]
        assert hook["url"] == "http://127.0.0.1:9/hooks/ci"
        api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": {"pool": "nowhere"}})
        wait_for(lambda: api.get(f"/v0/webhooks/{hook['id']}/deliveries").json()["items"], message="a delivery")
    page.fill("#token-name", "ci-from-console")
    page.click("#create-token")
    secret = page.locator("#secret-value").text_content() or ""
    assert secret.startswith("tcp_pat_")
    assert httpx.get(f"{base}/v0/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    expect(page.locator("#webhooks .hook tbody tr").first).to_contain_text("job.created")
    screenshot(page, "access")
    page.goto(f"{base}/ui/access")
    assert page.locator("#secret-value").count() == 0
    assert secret not in page.content()
    expect(page.locator("#tokens")).to_contain_text("ci-from-console")
    # The audit log lists what was just done, filterable, and exports as JSON Lines.
    page.fill('#audit-filters input[name="action"]', "token.create")
    page.click("#audit-filters button")
    expect(page.locator("#audit tbody tr").first).to_contain_text("token.create")
    assert "session.create" not in (page.locator("#audit tbody").text_content() or "")
    with page.expect_download() as download:
        page.click("#audit-export")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines and all(json.loads(line)["action"] == "token.create" for line in lines)


# --- escaping ----------------------------------------------------------------------------------

def _no_payload_ran(page: Page) -> None:
    assert page.evaluate("window.__xss === undefined"), "an injected payload ran"
    assert page.locator("main script").count() == 0
    assert page.locator("main img").count() == 0


def test_xss_payloads_in_logs_labels_and_names_stay_text(
    coordinator: Coordinator, context: BrowserContext, tmp_path: Path,
) -> None:
    payload = f"{XSS_SCRIPT}{XSS_IMG}"
    # An agent whose label holds a payload; the job selects it by that label, so both show it.
    agent = AgentProc(coordinator, tmp_path / "xss-agent", labels=("pool=xss", f"evil={XSS_IMG}")).start()
    try:
        _check_payloads_stay_text(coordinator, context, agent, payload)
    finally:
        agent.stop()


def _check_payloads_stay_text(coordinator: Coordinator, context: BrowserContext, agent: AgentProc,
                              payload: str) -> None:
    agent_id = agent.agent_id
    with coordinator.client() as api:
        created = api.post("/v0/jobs", json={
            "type": "COMMAND", "name": payload, "labels": {"pool": "xss", "evil": XSS_IMG},
            "command": f"printf '%s\\n' '{payload}'; printf '\\033[31m%s\\033[0m\\n' '{XSS_IMG}'",
            "timeoutSeconds": 60,
        })
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        finished = wait_terminal(api, job_id)
        assert finished["state"] == "SUCCEEDED", finished
        invited = api.post(f"/v0/workspaces/{coordinator.init['workspaceId']}/members",
                           json={"email": "<script>x</script>@evil.test", "role": "member"})
        assert invited.status_code == 201, invited.text
        hook = api.post("/v0/webhooks", json={"url": "http://127.0.0.1:9/<img/src=x/onerror=alert(1)>",
                                              "events": ["job.terminal"]})
        assert hook.status_code == 201, hook.text
    base = coordinator.url
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, base, coordinator.token)

    page.goto(f"{base}/ui/jobs")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator(".name")).to_have_text(payload)
    expect(row.locator(".label", has_text="evil=")).to_have_text(f"evil={XSS_IMG}")
    _no_payload_ran(page)
    # The live refresh inserts rows too: they stay text after it.
    expect(page.locator("#jobs")).to_have_attribute("data-refreshes", re.compile(r"^[1-9]"))
    expect(row.locator(".name")).to_have_text(payload)
    _no_payload_ran(page)

    page.goto(f"{base}/ui/jobs/{job_id}")
    expect(page.locator("#log-status")).to_have_text("finished: SUCCEEDED (exit 0)")
    expect(page.locator("#log")).to_have_text(f"{payload}\n{XSS_IMG}\n")
    expect(page.locator("#log span.fg-red")).to_have_text(XSS_IMG)
    expect(page.locator("h1 .name")).to_have_text(payload)
    _no_payload_ran(page)

    page.goto(f"{base}/ui/fleet")
    expect(page.locator(f'tr[data-agent="{agent_id}"] .label', has_text="evil=")).to_have_text(f"evil={XSS_IMG}")
    _no_payload_ran(page)

    page.goto(f"{base}/ui/access")
    expect(page.locator("#members")).to_contain_text("<script>x</script>@evil.test")
    expect(page.locator("#webhooks code.url").first).to_have_text("http://127.0.0.1:9/<img/src=x/onerror=alert(1)>")
    _no_payload_ran(page)
    assert errors == []
