"""The default identity of a server or publisher, as the original Qasino chose it.

The IPv4 address of ``eth0``, else of ``eth1``, else the address the host
name resolves to; if there is none, or it is a loopback or private address
(``127.``, ``10.``, ``192.168.``), the MAC address as a decimal number
(``uuid.getnode()``). Old and new publishers on one host thus report under
the same identity. ``-I``/``--identity`` overrides it everywhere.
"""

from __future__ import annotations

import socket
import struct
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Optional

INTERFACES = ("eth0", "eth1")
PRIVATE_PREFIXES = ("127.", "192.168.", "10.")
_SIOCGIFADDR = 0x8915  # Linux


def interface_ipv4(name: str) -> Optional[str]:
    """The IPv4 address of interface ``name``, or None (no such interface, no
    address, or a platform without the Linux ioctl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = struct.pack("256s", name.encode()[:15])
            reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, packed)
        return socket.inet_ntoa(reply[20:24])
    except (OSError, ImportError):
        return None


def hostname_ipv4() -> Optional[str]:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def mac_identity() -> str:
    return str(uuid.getnode())


def default_identity(
    interface_ip: Callable[[str], Optional[str]] = interface_ipv4,
    host_ip: Callable[[], Optional[str]] = hostname_ipv4,
    mac: Callable[[], str] = mac_identity,
    interfaces: Sequence[str] = INTERFACES,
) -> str:
    """The original's default identity (see the module docstring)."""
    ip: Optional[str] = None
    for name in interfaces:
        ip = interface_ip(name)
        if ip:
            break
    else:
        ip = host_ip()
    if not ip or ip.startswith(PRIVATE_PREFIXES):
        return mac()
    return ip
