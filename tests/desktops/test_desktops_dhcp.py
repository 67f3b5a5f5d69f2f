"""Desktop addresses reach netslate's dnsmasq as DHCP reservations (real store, real allocator)."""

import uuid

from netslate.boot.reservations import reservations_from_db
from netslate.desktops.addresses import allocate
from netslate.desktops.models import Desktop


def test_desktop_addresses_become_dnsmasq_reservations(ctx):
    with ctx.db.session() as s:
        d = Desktop(name="ns-test-lab-1", pool_name="lab", number=1, host="local", uuid=str(uuid.uuid4()),
                    mac="52:54:00:12:34:56", state="ready", golden_version=1, disk="/nonexistent")
        s.add(d)
        s.flush()
        desktop_id = d.id
    ip = allocate(ctx.db.session, "lab", "10.20.0.5", "10.20.0.9", desktop_id, "52:54:00:12:34:56", "lab-1")
    assert ip == "10.20.0.5"
    res = reservations_from_db(ctx)
    assert [(r.mac, r.ip, r.hostname) for r in res] == [("52:54:00:12:34:56", "10.20.0.5", "lab-1")]
