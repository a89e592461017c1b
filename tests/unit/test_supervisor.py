"""The stack's supervisor on tiny fake children (`python -c ...`), in seconds."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from deploy.local.supervisor import ChildSpec, LogLine, RestartPolicy, State, Supervisor

PY = sys.executable
FAST = RestartPolicy(backoff_s=0.2, max_backoff_s=2.0, max_restarts=3, restart_window_s=60.0)


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def run_until(sup: Supervisor, cond, deadline_s: float = 10.0, what: str = "condition") -> float:
    """Ticks `sup` until `cond()`; returns the monotonic time it held."""
    deadline = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < deadline, f"no {what} after {deadline_s} s: {sup.status()}"
        sup.tick()
        time.sleep(0.02)
    return time.monotonic()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"


def test_a_child_starts_only_after_what_it_needs_is_ready(tmp_path, logs):
    flag = tmp_path / "a-ready"
    # `a` becomes ready 0.5 s after it starts (its log line); `b` needs `a`, `c` needs `b`
    a = ChildSpec(
        "a",
        py(
            f"import time; time.sleep(0.5); print('ready', flush=True); "
            f"open({str(flag)!r}, 'w').close(); time.sleep(60)"
        ),
        ready=LogLine("ready"),
    )
    b = ChildSpec("b", py("import time; time.sleep(60)"), needs=("a",))
    c = ChildSpec("c", py("import time; time.sleep(60)"), needs=("b",))
    sup = Supervisor([c, b, a], logs, check_every_s=0.05)  # listed out of order on purpose
    try:
        sup.tick()
        assert sup.state("a") is State.STARTING
        assert sup.state("b") is State.WAITING and sup.state("c") is State.WAITING
        run_until(sup, lambda: sup.state("b") is not State.WAITING, what="start of b")
        assert flag.exists(), "b started before a was ready"
        run_until(sup, lambda: sup.is_ready("c"), what="c ready")
        seqs = {n: sup.children[n].started_seq for n in "abc"}
        assert seqs["a"] < seqs["b"] < seqs["c"]
    finally:
        sup.shutdown(grace_s=2.0)


def test_a_start_condition_holds_a_child_back_until_it_is_true(logs):
    allowed = []
    gated = ChildSpec("gated", py("import time; time.sleep(60)"), start_when=lambda: bool(allowed))
    sup = Supervisor([gated], logs, check_every_s=0.0)
    try:
        for _ in range(5):
            sup.tick()
        assert sup.state("gated") is State.WAITING
        allowed.append(True)
        sup.tick()
        assert sup.state("gated") is State.READY
    finally:
        sup.shutdown(grace_s=2.0)


def test_a_crashed_child_is_restarted_after_a_doubling_backoff(tmp_path, logs):
    starts = tmp_path / "starts"
    crash = ChildSpec(
        "crash",
        py(
            f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); "
            "raise SystemExit(3)"
        ),
        restart=RestartPolicy(backoff_s=0.3, max_backoff_s=5.0, max_restarts=10),
    )
    sup = Supervisor([crash], logs)
    try:
        run_until(
            sup,
            lambda: starts.exists() and len(starts.read_text().split()) >= 3,
            what="three starts",
        )
        times = [float(t) for t in starts.read_text().split()]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # 0.3 s, then doubled
        assert gaps[1] > gaps[0]
        assert sup.children["crash"].restarts >= 2 and sup.children["crash"].exit_code == 3
        assert "crash" in (logs / "crash.log").name
    finally:
        sup.shutdown(grace_s=2.0)


def test_the_restart_cap_marks_a_child_failed_and_the_rest_keeps_running(logs):
    crash = ChildSpec("crash", py("raise SystemExit(1)"), ready=lambda: False, restart=FAST)
    steady = ChildSpec("steady", py("import time; time.sleep(60)"))
    after = ChildSpec("after", py("import time; time.sleep(60)"), needs=("crash",))
    sup = Supervisor([crash, steady, after], logs)
    try:
        run_until(sup, lambda: sup.state("crash") is State.FAILED, what="crash failed")
        assert sup.children["crash"].restarts == FAST.max_restarts
        sup.tick()
        assert sup.state("steady") is State.READY and sup.children["steady"].running()
        assert sup.state("after") is State.FAILED  # what needs a failed child cannot start
        assert sup.children["after"].proc is None
    finally:
        sup.shutdown(grace_s=2.0)


def test_backoff_doubles_up_to_its_maximum():
    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=30.0)
    assert [policy.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_oneshot_step_is_done_when_it_exits_zero_and_unblocks_its_dependents(logs):
    step = ChildSpec("step", py("import time; time.sleep(0.5); print('trained')"), oneshot=True)
    service = ChildSpec("service", py("import time; time.sleep(60)"), needs=("step",))
    sup = Supervisor([step, service], logs)
    try:
        sup.tick()  # under way: running (not "starting": a step has no readiness of its own)
        assert sup.state("step") is State.RUNNING and sup.state("service") is State.WAITING
        run_until(sup, lambda: sup.is_ready("service"), what="service ready")
        assert sup.state("step") is State.DONE and sup.children["step"].restarts == 0
    finally:
        sup.shutdown(grace_s=2.0)


def test_shutdown_stops_in_reverse_order_and_kills_a_child_that_ignores_sigterm(
    tmp_path, logs, caplog
):
    order = tmp_path / "order"
    polite = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(order)!r}, 'a').write('{{}}\\n'.format(sys.argv[1])); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        # a grandchild in the same process group: it must not outlive the stack either
        f"g = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(tmp_path / 'grandchild')!r}, 'w').write(str(g.pid))\n"
        "print('up', flush=True)\n"
        "print('busy with something that ignores SIGTERM', flush=True)\n"
        "time.sleep(60)\n"
    )
    specs = [
        ChildSpec("first", [PY, "-c", polite, "first"], ready=LogLine("up")),
        ChildSpec(
            "second",
            [PY, "-c", polite, "second"],
            needs=("first",),
            ready=LogLine("up"),
        ),
        ChildSpec(
            "stubborn",
            py(stubborn),
            needs=("second",),
            ready=LogLine("up"),
        ),
    ]
    sup = Supervisor(specs, logs, check_every_s=0.05)
    run_until(sup, lambda: sup.is_ready("stubborn"), what="all ready")
    pids = {n: c.proc.pid for n, c in sup.children.items()}
    grandchild = int((tmp_path / "grandchild").read_text())
    started = time.monotonic()
    codes = sup.shutdown(grace_s=0.5)
    took = time.monotonic() - started
    assert order.read_text().split() == ["second", "first"]  # reverse of the start order
    assert codes["first"] == 0 and codes["second"] == 0
    assert codes["stubborn"] == -9  # killed after the grace period
    # The warning says what the killed child was doing: the end of its log.
    killed = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert len(killed) == 1 and killed[0].startswith("stubborn did not stop in 0 s")
    assert killed[0].endswith("up\nbusy with something that ignores SIGTERM")
    assert 0.5 <= took < 5.0
    assert all(sup.state(n) is State.STOPPED for n in pids)
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in [*pids.values(), grandchild])


def test_unknown_needs_are_refused(logs):
    with pytest.raises(ValueError, match="unknown children"):
        Supervisor([ChildSpec("a", py("pass"), needs=("nope",))], logs)


def test_a_log_line_from_an_earlier_run_does_not_count_as_ready(logs):
    logs.mkdir(parents=True)
    (logs / "svc.log").write_text("up\n")  # the previous run's line
    svc = ChildSpec(
        "svc",
        py("import time; time.sleep(1.0); print('up', flush=True); time.sleep(60)"),
        ready=LogLine("up"),
    )
    sup = Supervisor([svc], logs, check_every_s=0.0)
    try:
        sup.tick()
        sup.tick()
        assert sup.state("svc") is State.STARTING
        run_until(sup, lambda: sup.is_ready("svc"), what="svc ready")
    finally:
        sup.shutdown(grace_s=2.0)
