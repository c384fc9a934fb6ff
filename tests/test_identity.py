"""The original's default identity (qasino/identity.py)."""

from __future__ import annotations

from typing import Optional

import pytest

from qasino.identity import default_identity, interface_ipv4


def pick(ifaces: dict[str, str], host: Optional[str] = None) -> str:
    return default_identity(interface_ip=ifaces.get, host_ip=lambda: host, mac=lambda: "123456789")


def test_eth0_first_then_eth1_then_the_host_names_address() -> None:
    assert pick({"eth0": "203.0.113.5", "eth1": "198.51.100.7"}, "192.0.2.1") == "203.0.113.5"
    assert pick({"eth1": "198.51.100.7"}, "192.0.2.1") == "198.51.100.7"
    assert pick({}, "192.0.2.1") == "192.0.2.1"


@pytest.mark.parametrize("ip", [None, "", "127.0.1.1", "10.1.2.3", "192.168.0.9"])
def test_no_address_or_a_private_one_gives_the_mac(ip: Optional[str]) -> None:
    ifaces = {"eth0": ip} if ip else {}
    assert pick(ifaces, ip) == "123456789"  # type: ignore[arg-type]


def test_an_interface_that_does_not_exist_has_no_address() -> None:
    assert interface_ipv4("qasino-no-such0") is None


def test_the_real_default_is_an_address_or_a_number() -> None:
    identity = default_identity()
    assert identity.isdigit() or identity.count(".") == 3
