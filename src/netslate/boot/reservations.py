"""DHCP reservations for dnsmasq's hosts file: machines with a `dhcp-ip` label (from the inventory)
and pooled virtual desktops' addresses (from the desktops part). One bad row is logged and skipped,
never a reason to take DHCP down for everyone."""

from __future__ import annotations

import logging

from netslate import inventory
from netslate.boot.dnsmasq_config import DhcpConfigError, Reservation
from netslate.desktops.addresses import desktop_reservations

log = logging.getLogger("netslate.dnsmasq")

RESERVATION_LABEL = "dhcp-ip"


def reservations_from_db(ctx) -> list[Reservation]:
    """Machines with a fixed address, one reservation per MAC. The address is the machine's
    `dhcp-ip` label (`netslate machine add --mac M --hostname h --label dhcp-ip=10.0.0.9`):
    `machines.ip_address` is not used because discovery fills it with the address a machine
    last booted from, which is not a reservation."""
    out = []
    for m in inventory.list_machines(ctx):
        ip = m["labels"].get(RESERVATION_LABEL)
        if not ip:
            continue
        host = m["hostname"].split(".")[0] if m["hostname"] else None
        for mac in m["macs"]:
            try:
                out.append(Reservation(mac, ip, host, owner=f"machine:{m['id']}").checked())
            except DhcpConfigError as exc:
                log.error("skipping DHCP reservation of machine %s: %s", m["id"], exc)
    # Pooled virtual desktops hold addresses from their pool's range.
    for mac, ip, host in desktop_reservations(ctx):
        try:
            out.append(Reservation(mac, ip, host, owner=f"desktop:{host}").checked())
        except DhcpConfigError as exc:
            log.error("skipping DHCP reservation of desktop %s: %s", host, exc)
    return out
