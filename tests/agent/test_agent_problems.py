"""The agent's problems: one slot per source, rebuilt when the source runs (agent/problems.py), so
a report lists what is wrong now. Unit test of the slots, and a real agent against a real server
that is down for one round and back for the next."""

from __future__ import annotations

from nstest import free_port
from netslate.agent.problems import PER_SOURCE, Problems

from agent_support import agent_for, make_root, serve_on


def test_slots_replace_not_grow():
    p = Problems(["boot: bad key"])
    p.start("locate")
    p.add("locate", "no server answered (a)")
    p.set("enroll", "waiting for approval")
    assert p.lines() == ["boot: bad key", "no server answered (a)", "waiting for approval"]
    for _ in range(50):  # the same source, round after round: one line, not fifty
        p.start("locate")
        p.add("locate", "no server answered (a)")
    assert p.lines().count("no server answered (a)") == 1
    p.start("locate")  # it answered
    p.set("enroll", None)  # approved
    assert p.lines() == ["boot: bad key"] and list(p) == p.lines() and len(p) == 1
    p.start("boot")
    assert not p  # reads like the list of lines: empty is false
    for i in range(PER_SOURCE + 3):  # several lines in one round, bounded
        p.add("bundle", f"bundle from s{i} not used")
    assert p.of("bundle") == [f"bundle from s{i} not used" for i in range(3, PER_SOURCE + 3)]
    p.add("bundle", "bundle from s7 not used")  # the same line twice in a round: once
    assert len(p.of("bundle")) == PER_SOURCE


def test_a_server_back_takes_its_lines_away(ctx, world, tmp_path):
    port = free_port()
    root = make_root(tmp_path)
    a = agent_for(root, f"http://127.0.0.1:{port}", ctx.signing_key.public_b64, timeout=2.0)
    down = a.run_once().report["problems"]
    assert any("no server answered" in p for p in down) and any("image's defaults" in p for p in down)
    srv = serve_on(ctx, port)
    try:
        up = a.run_once().report
        assert up["config_source"] == "server"
        assert not any("no server answered" in p or "image's defaults" in p for p in up["problems"]), up["problems"]
        for _ in range(3):  # nothing accumulates round after round
            assert a.run_once().report["problems"] == up["problems"]
    finally:
        srv.stop()
