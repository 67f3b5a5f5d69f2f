"""A running agent that fell back to a later server (its branch's was down) returns to the preferred
one when that is back (issue 15 §4), after `agent.relocate_seconds`; one that found its first
server never re-locates. Real servers on loopback over one database."""

from __future__ import annotations

import time

from nstest import free_port

from agent_support import DOC, agent_for, make_root, publish, serve_on


def test_agent_returns_to_the_preferred_server_when_it_is_back(ctx, world, tmp_path):
    publish(ctx, {**DOC, "agent": {"relocate_seconds": 1}})
    preferred, fallback = free_port(), free_port()
    b = serve_on(ctx, fallback)
    a_srv = None
    try:
        agent = agent_for(make_root(tmp_path), [f"http://127.0.0.1:{preferred}", f"http://127.0.0.1:{fallback}"],
                          ctx.signing_key.public_b64, timeout=2.0)
        assert agent.follow_step(wait=0) == "applied"
        assert agent.url == f"http://127.0.0.1:{fallback}" and agent.fell_back
        a_srv = serve_on(ctx, preferred)
        time.sleep(1.1)  # agent.relocate_seconds
        assert agent.follow_step(wait=1) == "unchanged"
        assert agent.url == f"http://127.0.0.1:{preferred}" and not agent.fell_back
        # Server-side evidence: with the fallback server gone the agent goes on without a new search.
        b.stop()
        b = None
        located = agent.located_at
        assert agent.follow_step(wait=1) == "unchanged"
        assert agent.located_at == located
    finally:
        for s in (a_srv, b):
            if s is not None:
                s.stop()


def test_an_agent_on_its_first_server_does_not_search_again(ctx, world, tmp_path):
    publish(ctx, {**DOC, "agent": {"relocate_seconds": 1}})
    port = free_port()
    srv = serve_on(ctx, port)
    try:
        agent = agent_for(make_root(tmp_path), [f"http://127.0.0.1:{port}"], ctx.signing_key.public_b64, timeout=2.0)
        assert agent.follow_step(wait=0) == "applied" and not agent.fell_back
        located = agent.located_at
        time.sleep(1.1)
        assert agent.follow_step(wait=1) == "unchanged"
        assert agent.located_at == located
    finally:
        srv.stop()
