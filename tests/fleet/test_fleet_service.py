"""The fleet over real HTTP: an agent's report (open, then enrolled with its credential), identify,
the fleet table in both CLI modes, the same table from the API, and Prometheus /metrics."""

import httpx

MAC = "52:54:00:0f:1e:01"

REPORT = {"phase": "configured", "generation": 0, "config_source": "server", "image": "fleetimg", "version": 3,
          "image_source": "cache", "booted_via": "local disk", "modules": {"files": "ok", "units": "error: boom"},
          "health": {"ok": True, "checks": [{"name": "sshd", "ok": True, "ms": 5}]}, "timings": {"apply": 1.5},
          "sent_at": 100.0}


def test_fleet_reports_status_metrics(ctx, cli, live_server):
    from netslate import inventory
    from netslate.config import credentials

    inventory.add_machine(ctx, [MAC], name="pc1")
    url = live_server.url
    r = httpx.post(f"{url}/api/v1/machines/pc1/report", json=REPORT, timeout=10)
    assert r.status_code == 202, r.text
    assert r.json() == {"id": 1, "accepted": True, "current": True, "authenticated": False, "state": "degraded"}
    assert httpx.post(f"{url}/api/v1/machines/pc1/report", json=[1], timeout=10).status_code == 400
    assert httpx.post(f"{url}/api/v1/machines/pc1/report", json={"phase": "x"}, timeout=10).status_code == 400
    assert httpx.post(f"{url}/api/v1/machines/pc9/report", json=REPORT, timeout=10).status_code == 404

    r = httpx.get(f"{url}/api/v1/fleet/identify", params={"mac": ["00:00:00:00:00:01", MAC.upper()]}, timeout=10)
    assert r.status_code == 200 and r.json() == {"id": 1, "name": "pc1"}
    assert httpx.get(f"{url}/api/v1/fleet/identify", params={"mac": "52:54:00:00:00:99"}, timeout=10).status_code == 404

    fs = cli("fleet", "status", "--json")
    assert fs.code == 0, fs.stderr
    data = fs.json()
    m = data["machines"][0]
    assert (m["id"], m["name"], m["state"], m["image"], m["version"], m["booted_via"]) == (1, "pc1", "degraded", "fleetimg", 3, "local disk")
    assert m["health"] == [{"name": "sshd", "ok": True, "error": None, "ms": 5}] and m["timings"] == {"apply": 1.5}
    assert m["failures"] == {"units": "error: boom"}
    assert m["flags"] == ["image_from_cache", "module_errors", "unauthenticated"]
    assert data["summary"] == {"machines": 1, "flagged": 1,
                               "states": {"discovered": 0, "booting": 0, "configured": 0, "degraded": 1, "offline": 0}}
    assert httpx.get(f"{url}/api/v1/fleet", timeout=10).json() == data
    assert cli("fleet", "status", "--state", "offline", "--json").json()["machines"] == []
    bad = cli("fleet", "status", "--state", "asleep")
    assert bad.code == 2 and "unknown state 'asleep'" in bad.stderr and "Traceback" not in bad.stderr
    assert "pc1" in cli("fleet", "status").stdout

    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'netslate_machine_image_version{image="fleetimg",machine="1",name="pc1"} 3.0' in metrics.text
    assert 'netslate_machines{state="degraded"} 1.0' in metrics.text

    # Enrolled: a report needs the machine's credential, and then counts as authenticated.
    token = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    later = dict(REPORT, sent_at=200.0, modules={"files": "ok"})
    assert httpx.post(f"{url}/api/v1/machines/1/report", json=later, timeout=10).status_code == 403
    r = httpx.post(f"{url}/api/v1/machines/1/report", json=later, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 202 and r.json()["authenticated"] is True and r.json()["state"] == "configured"
    assert cli("fleet", "status", "--json").json()["machines"][0]["flags"] == ["image_from_cache"]
