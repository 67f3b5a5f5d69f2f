"""VMs netslate creates carry a one-time enrollment token in their SMBIOS type 11 OEM strings (issue
13 §3): the domain XML has <sysinfo type='smbios'><oemStrings> and <os><smbios mode='sysinfo'/>,
real libvirt accepts and keeps it, and the token, bound to the domain's UUID, is exchanged once
for a credential at trust `host`."""

import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from desktops_fixtures import URI, ensure_libvirtd
from netslate.desktops import domains, domainxml
from netslate.enrollment import tokens


def _spec(**kw):
    base = dict(name=f"ns-oem-{uuidlib.uuid4().hex[:8]}", uuid=str(uuidlib.uuid4()), vcpus=1, memory_mib=128,
                disk_path=None, mac="52:54:00:13:00:01", network="none", display="vnc", video="virtio",
                kernel="/nonexistent/vmlinuz")
    base.update(kw)
    return domainxml.DomainSpec(**base)


def test_domain_xml_carries_the_oem_string_and_libvirt_keeps_it(ctx):
    spec = _spec()
    entry = domains.host_token_entry(ctx, spec.uuid)
    assert entry.startswith("netslate-enroll:nse_")
    spec.oem_strings.append(entry)
    xml = domainxml.build(spec)
    root = ET.fromstring(xml)
    assert root.find("sysinfo").get("type") == "smbios"
    assert [e.text for e in root.findall("sysinfo/oemStrings/entry")] == [entry]
    assert root.find("os/smbios").get("mode") == "sysinfo"
    assert ET.fromstring(domainxml.build(_spec())).find("sysinfo") is None  # nothing asked, nothing added

    # real libvirt: defined (not started), read back, undefined
    import libvirt

    ensure_libvirtd()
    conn = libvirt.open(URI)
    try:
        dom = conn.defineXML(xml)
        try:
            back = ET.fromstring(dom.XMLDesc(0))
            assert [e.text for e in back.findall("sysinfo/oemStrings/entry")] == [entry]
            assert back.find("os/smbios").get("mode") == "sysinfo"
        finally:
            dom.undefine()
    finally:
        conn.close()

    # the token inside is bound to this domain's UUID and good once, at trust host
    tok = entry.removeprefix(tokens.OEM_PREFIX)
    with pytest.raises(tokens.TokenRefused):
        tokens.exchange(ctx, tok, uuid=str(uuidlib.uuid4()))
    got = tokens.exchange(ctx, tok, uuid=spec.uuid, macs=[spec.mac])
    assert got.trust == "host"
    with pytest.raises(tokens.TokenUsed):
        tokens.exchange(ctx, tok, uuid=spec.uuid)
    # a diskless desktop is a machine (registered by its MAC) before it boots: the token names it,
    # so the credential goes to that record, not to a new one made from the UUID
    from netslate import inventory

    mid = inventory.add_machine(ctx, ["52:54:00:13:00:02"], name="diskless-1", actor="local:test")["id"]
    other = str(uuidlib.uuid4())
    tok2 = domains.host_token_entry(ctx, other, "52:54:00:13:00:02").removeprefix(tokens.OEM_PREFIX)
    assert tokens.exchange(ctx, tok2, uuid=other, macs=["52:54:00:13:00:02"]).machine_id == mid
