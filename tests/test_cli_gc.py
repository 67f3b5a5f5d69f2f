"""The CLI runs its commands without the cyclic garbage collector and skips the interpreter's last
passes at exit (cli/main.py); `serve`, which runs for good, turns collection back on."""

import subprocess
import sys
from pathlib import Path


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_command_runs_without_the_cycle_collector_and_freezes_at_exit():
    out = _run("import atexit, gc\n"
               "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"  # before the CLI's: runs after it
               "import netslate.cli.main\n"
               "print('enabled', gc.isenabled())")
    assert out.splitlines() == ["enabled False", "frozen True"]


def test_serve_turns_collection_back_on():
    out = _run("import gc, netslate.cli.main\n"
               "from netslate.cli.common import long_running\n"
               "long_running()\n"
               "print(gc.isenabled(), gc.get_freeze_count() > 0)")
    assert out == "True True"
    import netslate.cli.serve

    source = Path(netslate.cli.serve.__file__).read_text()
    assert source.index("long_running()") < source.index("uvicorn.run(")
