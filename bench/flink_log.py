"""Where a Flink job's seconds go, read from the log of its MiniCluster.

`plum bench flink` runs each job with FLINK_LOG_DIR set to the run's own directory, so
the log holds that one job. Its INFO lines mark the phases of the job's life:

    client   execute() called ... "Submitting job '<name>' (<id>)"
                                    planning, code generation, the MiniCluster's start
    deploy   submitted ........... the last task "switched from INITIALIZING to RUNNING"
    records  tasks running ....... the last "Finished reading split(s)" (end of input)
    finish   input read .......... "Job <name> (<id>) switched from state RUNNING to FINISHED"
                                    the operators drain, the final checkpoint commits

The client phase is not in the log (the client's clock starts before anything is
logged): it is the client's job seconds less the three logged phases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")
SUBMITTED = re.compile(r"Submitting job '[^']*' \(([0-9a-f]{32})\)")
TASK_RUNNING = "switched from INITIALIZING to RUNNING"
SPLIT_DONE = "Finished reading split(s)"
FINISHED = re.compile(r"Job .* \(([0-9a-f]{32})\) switched from state RUNNING to FINISHED")


@dataclass(frozen=True)
class JobPhases:
    """Seconds of each phase (see the module doc); None where the log lacks its marks."""

    client_s: float | None
    deploy_s: float
    records_s: float
    finish_s: float

    def to_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 3) for k, v in asdict(self).items()}


def _stamp(line: str) -> datetime | None:
    m = _STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def job_phases(lines: Iterable[str], job_seconds: float | None = None) -> JobPhases | None:
    """The phases of the one job in `lines` (a MiniCluster's log); None when the log does
    not show it submitted, running, its input read and finished. `job_seconds` (the
    client's clock: execute() to the end) gives the client phase."""
    submitted = running = read = finished = None
    job_id = None
    for line in lines:
        at = _stamp(line)
        if at is None:
            continue
        if job_id is None and (m := SUBMITTED.search(line)):
            job_id, submitted = m.group(1), at
        elif submitted is None:
            continue
        elif TASK_RUNNING in line:
            running = at
        elif SPLIT_DONE in line:
            read = at
        elif (m := FINISHED.search(line)) and m.group(1) == job_id:
            finished = at
    if None in (submitted, running, read, finished):
        return None
    logged = (finished - submitted).total_seconds()
    return JobPhases(
        client_s=None if job_seconds is None else max(job_seconds - logged, 0.0),
        deploy_s=(running - submitted).total_seconds(),
        records_s=(read - running).total_seconds(),
        finish_s=(finished - read).total_seconds(),
    )


def phases_in(log_dir: Path, job_seconds: float | None = None) -> dict | None:
    """job_phases of the `*.log` files under `log_dir` (read in name order), as a dict."""
    lines: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        lines.extend(path.read_text(errors="replace").splitlines())
    phases = job_phases(lines, job_seconds)
    return None if phases is None else phases.to_dict()
