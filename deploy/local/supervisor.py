"""Supervised child processes: dependency order, readiness, restarts, clean shutdown.

A `ChildSpec` names a command, the children it `needs`, how to tell it is ready and
whether it is a one-shot step (done when it exits 0) or a service (kept running). The
`Supervisor` is driven by calling `tick()` in a loop (no threads of its own):

- a child starts once every child it needs is ready and its `start_when` condition
  holds (a Kafka condition, say) — it waits for what it needs, not for a fixed time;
- it is ready when its `ready` check passes (an HTTP GET on its /metrics, a line in
  its log since this start),
  a service without a check as soon as it runs, a one-shot step when it exited 0;
- a child that exits (a service at all, a step with a non-zero code) is started again
  after a backoff that doubles from `backoff_s` to `max_backoff_s`; more than
  `max_restarts` restarts within `restart_window_s` mark it failed, and the rest of the
  stack keeps running;
- `shutdown()` sends SIGTERM to each running child's process group in reverse start
  order, waits up to `grace_s` for each, then SIGKILLs the group, so nothing is left.

Each child's output goes to `log_dir/NAME.log` (appended across restarts).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class State(StrEnum):
    WAITING = "waiting"  # for its needs or its start condition
    STARTING = "starting"  # running, not ready yet
    RUNNING = "running"  # a one-shot step under way (done when it exits 0)
    READY = "ready"
    RESTARTING = "restarting"  # exited; started again after the backoff
    DONE = "done"  # a one-shot step that exited 0
    FAILED = "failed"  # restart cap reached (or a needed child failed)
    STOPPED = "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_restarts: int = 5  # within restart_window_s; one more exit marks the child failed
    restart_window_s: float = 300.0

    def delay(self, restarts_so_far: int) -> float:
        """The wait before restart number `restarts_so_far + 1`: 1, 2, 4 … capped."""
        return min(self.max_backoff_s, self.backoff_s * 2.0**restarts_so_far)


@dataclass(frozen=True)
class LogLine:
    """Ready when the child's log, since its latest start, holds `text`."""

    text: str


@dataclass(frozen=True)
class ChildSpec:
    name: str
    command: Sequence[str]
    needs: tuple[str, ...] = ()
    ready: Check | LogLine | None = None  # None: ready once running (a step: exited 0)
    start_when: Check | None = None  # polled before the (first) start, after the needs
    oneshot: bool = False
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    env: Mapping[str, str] | None = None  # None: the supervisor's environment


@dataclass
class ChildStatus:
    """What the status view shows of one child."""

    name: str
    state: State
    restarts: int
    pid: int | None
    exit_code: int | None  # of its latest exit
    log_path: Path


class Child:
    """The running state of one spec."""

    def __init__(self, spec: ChildSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.state = State.WAITING
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exits: deque[float] = deque()  # monotonic times of unexpected exits
        self.restart_at = 0.0
        self.last_check = 0.0
        self.exit_code: int | None = None
        self.log_start = 0  # the log's size at the latest start
        self.started_seq = -1  # order of the latest start (shutdown reverses it)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> ChildStatus:
        pid = self.proc.pid if self.running() and self.proc is not None else None
        return ChildStatus(
            self.spec.name, self.state, self.restarts, pid, self.exit_code, self.log_path
        )


def http_ok(url: str, timeout_s: float = 1.0) -> Check:
    """Ready when GET `url` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return 200 <= r.status < 300
        except OSError:
            return False

    return check


def log_holds(path: Path, text: str, start: int = 0) -> bool:
    """Whether the file holds `text` after byte `start` (searched in its last 1 MiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(start, fh.seek(0, 2) - (1 << 20)))
            return text.encode() in fh.read()
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file (from its last 64 KiB), or why there are none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - (1 << 16)))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        check_every_s: float = 1.0,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names repeat: {names}")
        for s in specs:
            missing = set(s.needs) - set(names)
            if missing:
                raise ValueError(f"{s.name} needs unknown children {sorted(missing)}")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children = {s.name: Child(s, log_dir) for s in specs}
        self.env = dict(env if env is not None else os.environ)
        self.check_every_s = check_every_s
        self._seq = 0

    # ------------------------------------------------------------------ queries

    def status(self) -> list[ChildStatus]:
        return [c.status() for c in self.children.values()]

    def state(self, name: str) -> State:
        return self.children[name].state

    def is_ready(self, name: str) -> bool:
        return self.children[name].state in (State.READY, State.DONE)

    # ------------------------------------------------------------------ the loop

    def tick(self) -> None:
        """One pass: notice exits, schedule restarts, start what may start, check
        readiness. Call it every fraction of a second."""
        now = time.monotonic()
        for child in self.children.values():
            if child.state in (State.STARTING, State.RUNNING, State.READY) and not child.running():
                self._exited(child, now)
            if child.state is State.RESTARTING and now >= child.restart_at:
                self._start(child)
            elif child.state is State.WAITING:
                self._maybe_start(child, now)
            if child.state is State.STARTING:
                self._check_ready(child, now)

    def _maybe_start(self, child: Child, now: float) -> None:
        needs = [self.children[n] for n in child.spec.needs]
        failed = [n.spec.name for n in needs if n.state is State.FAILED]
        if failed:
            log.error("%s cannot start: %s failed", child.spec.name, ", ".join(failed))
            child.state = State.FAILED
            return
        if not all(self.is_ready(n.spec.name) for n in needs):
            return
        if child.spec.start_when is not None:
            if now - child.last_check < self.check_every_s:
                return
            child.last_check = now
            if not child.spec.start_when():
                return
        self._start(child)

    def _start(self, child: Child) -> None:
        spec = child.spec
        with open(child.log_path, "ab") as out:
            child.log_start = out.tell()
            child.proc = subprocess.Popen(
                list(spec.command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(spec.env) if spec.env is not None else self.env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        child.state = State.RUNNING if spec.oneshot else State.STARTING
        child.last_check = 0.0
        child.started_seq = self._seq
        self._seq += 1
        log.info("started %s (pid %d), log %s", spec.name, child.proc.pid, child.log_path)

    def _check_ready(self, child: Child, now: float) -> None:
        spec = child.spec
        if spec.ready is None:
            child.state = State.READY
            return
        if now - child.last_check < self.check_every_s:
            return
        child.last_check = now
        if isinstance(spec.ready, LogLine):
            ok = log_holds(child.log_path, spec.ready.text, child.log_start)
        else:
            ok = spec.ready()
        if ok:
            child.state = State.READY
            log.info("%s is ready", spec.name)

    def _exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        child.exit_code = code
        self._kill_group(child)  # whatever it left behind in its group
        if child.spec.oneshot and code == 0:
            child.state = State.DONE
            log.info("%s finished", child.spec.name)
            return
        window = child.spec.restart.restart_window_s
        while child.exits and now - child.exits[0] > window:
            child.exits.popleft()
        child.exits.append(now)
        recent = len(child.exits) - 1  # restarts already made within the window
        if recent >= child.spec.restart.max_restarts:
            child.state = State.FAILED
            log.error(
                "%s exited with %s and has restarted %d times in %.0f s: marked failed; see %s",
                child.spec.name,
                code,
                recent,
                window,
                child.log_path,
            )
            return
        delay = child.spec.restart.delay(recent)
        child.state = State.RESTARTING
        child.restart_at = now + delay
        child.restarts += 1
        log.warning(
            "%s exited with %s; restart %d in %.1f s (log %s)",
            child.spec.name,
            code,
            child.restarts,
            delay,
            child.log_path,
        )

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, grace_s: float) -> dict[str, int | None]:
        """SIGTERM every running child, newest start first, each waited for up to
        `grace_s` and then SIGKILLed with its process group. Returns each started
        child's exit code (None for one never started)."""
        order = sorted(self.children.values(), key=lambda c: c.started_seq, reverse=True)
        for child in order:
            if child.proc is None:
                continue
            if child.running():
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s did not stop in %.0f s; killing. The end of its log (%s):\n%s",
                        child.spec.name,
                        grace_s,
                        child.log_path,
                        log_tail(child.log_path),
                    )
                    self._kill_group(child)
                    child.proc.wait()
                child.exit_code = child.proc.returncode
                self._kill_group(child)  # what it started and left behind
            if child.state is not State.FAILED and child.state is not State.DONE:
                child.state = State.STOPPED
        return {
            c.spec.name: (c.exit_code if c.proc is not None else None)
            for c in self.children.values()
        }

    @staticmethod
    def _kill_group(child: Child) -> None:
        if child.proc is None:
            return
        try:
            os.killpg(child.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
