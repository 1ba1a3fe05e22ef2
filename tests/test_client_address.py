"""coordinator/client_address.py: X-Forwarded-For is believed from trusted proxies only, read
right to left; and the coordinator keys its address limit, auth-failure counts and audit
``source`` by that address."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from common.config import ConfigError
from coordinator.client_address import client_address, from_scope, parse_networks
from coordinator.settings import PlanLimit, load_settings
from tests.inproc import InProcess, running_coordinator

LB = parse_networks(["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    # An untrusted peer's header is its own word: ignored, whatever it says.
    ("198.51.100.7", ["203.0.113.1"], "198.51.100.7"),
    ("198.51.100.7", [], "198.51.100.7"),
    # From the balancer: the rightmost hop that is not a trusted proxy.
    ("10.0.0.2", ["203.0.113.1"], "203.0.113.1"),
    ("10.0.0.2", ["6.6.6.6, 203.0.113.1"], "203.0.113.1"),  # the client's spoofed part, left of it
    ("10.0.0.2", ["6.6.6.6, 203.0.113.1, 10.1.2.3"], "203.0.113.1"),  # two balancers in a row
    ("10.0.0.2", ["6.6.6.6", "203.0.113.1"], "203.0.113.1"),  # one header line per proxy
    ("10.0.0.2", [" 203.0.113.1 ,10.9.9.9 "], "203.0.113.1"),
    ("10.0.0.2", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # every hop trusted: the leftmost
    ("10.0.0.2", [], "10.0.0.2"),  # a health check from the balancer itself
    ("10.0.0.2", ["not-an-address, 10.3.3.3"], "10.3.3.3"),  # unreadable: stop at the last good hop
    ("10.0.0.2", ["garbage"], "10.0.0.2"),
    ("10.0.0.2", ["203.0.113.1:5000"], "203.0.113.1"),
    ("10.0.0.2", ["[2001:db9::1]:443"], "2001:db9::1"),
    ("::ffff:10.0.0.2", ["203.0.113.1"], "203.0.113.1"),  # a dual-stack socket's IPv4 peer
    ("2001:db8::5", ["2001:db9::1"], "2001:db9::1"),
    (None, ["203.0.113.1"], None),
])
def test_the_rightmost_untrusted_hop_from_a_trusted_peer(peer: str | None, forwarded: list[str],
                                                         expected: str | None) -> None:
    assert client_address(peer, forwarded, LB) == expected


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("10.0.0.2", ["203.0.113.1"], ()) == "10.0.0.2"
    scope = {"client": ("10.0.0.2", 4711), "headers": [(b"x-forwarded-for", b"203.0.113.1")]}
    assert from_scope(scope, ()) == "10.0.0.2"
    assert from_scope(scope, LB) == "203.0.113.1"
    assert from_scope({"headers": []}, LB) is None


def test_a_bad_trusted_proxies_entry_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('[server]\ntrusted_proxies = ["10.0.0.0/8", "10.0.0.1/8"]\n')
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies: '10\.0\.0\.1/8' is not an IP address or CIDR"):
        load_settings(tmp_path, config)
    config.write_text('[server]\ntrusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]\n')
    assert load_settings(tmp_path, config).trusted_proxies == parse_networks(["10.0.0.0/8", "192.0.2.7/32",
                                                                              "2001:db8::/32"])
    assert load_settings(tmp_path).trusted_proxies == ()  # off unless configured



@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0", "::ffff:0:0/96"])
def test_trusting_every_address_is_a_config_error(tmp_path: Path, everything: str) -> None:
    """Every peer trusted: every client picks its own address with the header (the leftmost hop
    when all are trusted), which undoes the per-address limits on anonymous requests and failed
    logins. The operator lists the balancers' networks instead."""
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[server]\ntrusted_proxies = ["10.0.0.0/8", "{everything}"]\n')
    with pytest.raises(ConfigError, match=rf"server\.trusted_proxies: '{re.escape(everything)}' trusts every "
                                          r"address: any client could choose its own; list the load balancers"):
        load_settings(tmp_path, config)


def test_an_ipv4_mapped_entry_matches_the_ipv4_peer_it_names() -> None:
    """A dual-stack socket's peer ``::ffff:10.0.0.2`` is read as 10.0.0.2, so an entry written
    in the mapped form means the IPv4 network."""
    assert parse_networks(["::ffff:10.0.0.0/104"]) == parse_networks(["10.0.0.0/8"])
    trusted = parse_networks(["::ffff:10.0.0.2"])
    assert client_address("::ffff:10.0.0.2", ["203.0.113.1"], trusted) == "203.0.113.1"

# Three at one instant (the test clock stands still), then refused.
TIGHT = PlanLimit(1, 3, 1)


async def _anonymous_statuses(coord: InProcess, forwarded_for: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=coord.url, timeout=30,
                                 headers={"X-Forwarded-For": forwarded_for}) as anonymous:
        return [(await anonymous.get("/v0/jobs")).status_code for _ in range(n)]


def _audit_sources(coord: InProcess) -> list[str]:
    rows = coord.store.read_now("SELECT source FROM audit_events WHERE method = 'PATCH' ORDER BY id")
    return [row["source"] for row in rows]


async def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """The default: every client that invents a new X-Forwarded-For is still one address."""
    async with running_coordinator(tmp_path, unauthenticated_rate_limit=TIGHT) as coord:
        statuses = [(await _anonymous_statuses(coord, f"203.0.113.{i}", 1))[0] for i in range(4)]
        assert statuses == [401, 401, 401, 429]
        coord.clock.advance(10)
        async with coord.client() as owner:
            patched = await owner.patch(f"/v0/workspaces/{coord.workspace_id}", json={"name": "renamed"},
                                        headers={"X-Forwarded-For": "203.0.113.99"})
        assert patched.status_code == 200, patched.text
        assert _audit_sources(coord) == ["127.0.0.1"]


async def test_behind_a_trusted_proxy_each_client_has_its_own_address(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, unauthenticated_rate_limit=TIGHT,
                                   trusted_proxies=parse_networks(["127.0.0.1/32"])) as coord:
        assert await _anonymous_statuses(coord, "203.0.113.1", 4) == [401, 401, 401, 429]
        # Another client behind the same balancer has its own allowance ...
        assert await _anonymous_statuses(coord, "203.0.113.2", 1) == [401]
        # ... and the first cannot escape its own by writing another address to the left.
        assert await _anonymous_statuses(coord, "198.51.100.9, 203.0.113.1", 1) == [429]
        failures = {r["source"] for r in coord.store.read_now("SELECT source FROM auth_failures")}
        pending = {source for (_, source, _) in coord.svc.auth_failures}
        assert failures | pending == {"203.0.113.1", "203.0.113.2"}
        async with coord.client() as owner:
            patched = await owner.patch(f"/v0/workspaces/{coord.workspace_id}", json={"name": "renamed"},
                                        headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
        assert patched.status_code == 200, patched.text
        assert _audit_sources(coord) == ["203.0.113.7"]
