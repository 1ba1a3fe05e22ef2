"""Webhook targets are judged by the address they resolve to, in every IPv6 spelling of an
IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible, IPv4-mapped), and port 0 is refused."""

from __future__ import annotations

import pytest

from common.errors import Unprocessable
from coordinator import webhooks
from tests.procs import Coordinator

METADATA_SPELLINGS = ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::a9fe:a9fe", "::ffff:169.254.169.254",
                      "::ffff:a9fe:a9fe"]
PRIVATE_SPELLINGS = ["64:ff9b::a00:1", "2002:c0a8:101::1", "::7f00:1", "64:ff9b:1::a00:1",
                     "2001:0:4136:e378:8000:63bf:3fff:fdd2"]  # Teredo, client 192.0.2.45


def _resolver(address: str) -> webhooks.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]
    return resolve


@pytest.mark.parametrize("address", METADATA_SPELLINGS)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_metadata_address_is_refused_in_every_ipv6_spelling(address: str, allow_private: bool) -> None:
    for url, resolve in ((f"http://[{address}]/hook", _resolver("")),
                         ("http://innocent.example/hook", _resolver(address))):  # decided on the resolved address
        with pytest.raises(Unprocessable, match=r"a cloud metadata address \(169\.254\.169\.254 embedded") as caught:
            await webhooks.check_url(url, allow_private=allow_private, resolve=resolve)
        assert caught.value.field == "url"


@pytest.mark.parametrize("address", PRIVATE_SPELLINGS)
async def test_a_private_address_is_refused_in_every_ipv6_spelling_unless_private_targets_are_allowed(
        address: str) -> None:
    with pytest.raises(Unprocessable, match=r"a (private|loopback) address"):
        await webhooks.check_url("http://innocent.example/hook", allow_private=False, resolve=_resolver(address))
    assert await webhooks.check_url("http://innocent.example/hook", allow_private=True,
                                    resolve=_resolver(address)) == [address]


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"])
async def test_public_addresses_behind_a_translator_are_accepted(address: str) -> None:
    assert await webhooks.check_url(f"http://[{address}]/hook", allow_private=False,
                                    resolve=_resolver("")) == [address]


@pytest.mark.parametrize("url", ["http://hooks.example.com:0/x", "https://93.184.216.34:0/x"])
async def test_port_zero_is_refused(url: str) -> None:
    with pytest.raises(Unprocessable, match=r"^url port must be between 1 and 65535$"):
        await webhooks.check_url(url, allow_private=False, resolve=_resolver("93.184.216.34"))


@pytest.mark.parametrize("url", ["http://[64:ff9b::a9fe:a9fe]/x", "http://[2002:a9fe:a9fe::]/x",
                                 "http://[::a9fe:a9fe]/x", "http://93.184.216.34:0/x"])
def test_the_api_refuses_them_with_422(shared_coordinator: Coordinator, url: str) -> None:
    with shared_coordinator.client() as client:
        response = client.post("/v0/webhooks", json={"url": url, "events": ["job.terminal"]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "url"
