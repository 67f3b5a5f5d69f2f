"""The static front's nginx.conf and the printed site-cache config start with one shared head
(images/frontend._conf_head): process settings, pid, logs, events, the http block's opening. Both
configs pass `nginx -t`."""

from __future__ import annotations

import subprocess

from netslate.images.frontend import FrontSettings, NginxFront, nginx_binary, render_front_conf, render_site_cache_conf

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def test_front_and_site_cache_share_one_head(tmp_path):
    state = tmp_path / "state"
    front = render_front_conf(FrontSettings("0.0.0.0", 8080, 9000, "/d/chunks", "/d/serve", str(state), workers=3))
    cache = render_site_cache_conf("http://127.0.0.1:9000", "127.0.0.1:8081", str(tmp_path / "cache"),
                                   state_dir=str(state), workers=3)
    f_lines, c_lines = front.splitlines()[1:], cache.splitlines()[2:]  # past each one's comment
    end = next(i for i, line in enumerate(f_lines) if line.lstrip().startswith("scgi_temp_path")) + 1
    assert end >= 17 and f_lines[:end] == c_lines[:end]
    assert f_lines[0] == "worker_processes 3;" and f_lines[end - 1] == f'    scgi_temp_path "{state}/tmp/scgi";'
    for conf in (front, cache):  # each directive once
        assert conf.count("sendfile on;") == 1 and conf.count("worker_processes") == 1
    as_user = render_front_conf(FrontSettings("0.0.0.0", 8080, 9000, "/c", "/s", str(state), user="u g"))
    assert as_user.splitlines()[1:3] == ["user u g;", "worker_processes 2;"]


def test_both_configs_pass_nginx_t(tmp_path):
    front = NginxFront(FrontSettings("127.0.0.1", 8080, 9000, str(tmp_path / "chunks"), str(tmp_path / "serve"),
                                     str(tmp_path / "front")))
    front.write_files()
    front.check()
    cdir = tmp_path / "cache"
    for d in TEMP_DIRS:
        (cdir / "tmp" / d).mkdir(parents=True)
    conf = cdir / "nginx.conf"
    conf.write_text(render_site_cache_conf("http://127.0.0.1:9000", "127.0.0.1:8081", str(cdir)))
    r = subprocess.run([nginx_binary(), "-p", str(cdir), "-c", str(conf), "-e", str(cdir / "error.log"), "-t", "-q"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
