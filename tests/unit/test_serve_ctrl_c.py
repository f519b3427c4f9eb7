"""serve.py's Ctrl-C handler in a real process: one Ctrl-C delivered twice is one; a later one stops at once."""

import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, threading, time
    from reparam.serve.server import SAME_CTRL_C_S, _note_ctrl_c

    stopping = threading.Event()
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    _note_ctrl_c(stopping)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        print("first: stopping", stopping.is_set(), flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C again (timeout forwards its copy): ignored
    time.sleep(0.1)
    print("second copy ignored", flush=True)
    time.sleep(SAME_CTRL_C_S)
    print("child", child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # a later Ctrl-C while still stopping: everything ends at once
    time.sleep(5)
    print("not reached", flush=True)
    """
)


def test_one_ctrl_c_twice_is_one_and_a_later_one_stops_at_once() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        # as from a terminal: a suite started as a script's background job (cmd &) has SIGINT ignored, and every
        # subprocess inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["first: stopping True", "second copy ignored"], proc.stdout + proc.stderr
    assert "not reached" not in proc.stdout
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == (
        "server stopped at once by a second Ctrl-C: its processes were killed, requests in flight got no answer"
    )
    child = int(lines[2].split()[1])
    assert subprocess.run(["ps", "-p", str(child), "-o", "stat="], capture_output=True, text=True).stdout.strip() in (
        "",
        "Z",
    )  # killed (a zombie until init reaps it, or gone)
