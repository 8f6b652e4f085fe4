"""A real ``ink-matcher serve`` child process on 127.0.0.1, for load and fault runs.

Started as a user starts it (``python -m matcher.cli serve``), so measurements include
everything a deployment runs; the port comes back through ``--port-file``. The resident
memory and the CPU time of the process are read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MatcherProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident set size of the matcher now, in MiB (from /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("VmRSS missing from /proc status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the matcher has used so far (from /proc/<pid>/stat)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or power cut."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> str:
        """SIGTERM and wait; returns the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.log_path.read_text(errors="replace")


def start_matcher(
    db: Path,
    *extra: str,
    port: int = 0,
    timeout_s: float = 180.0,
    preexec_fn: Callable[[], None] | None = None,
    run_dir: Path | None = None,
) -> MatcherProcess:
    """Start ``ink-matcher serve --insecure`` on 127.0.0.1 and wait until it listens.

    The log and the port file go to ``run_dir`` (default: the watchlist's folder).
    """
    db = Path(db)
    run_dir = Path(run_dir) if run_dir else db.parent
    port_file = run_dir / f"{db.name}.port-{os.getpid()}-{time.monotonic_ns()}"
    log_path = run_dir / f"{db.name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "matcher.cli", "serve", "--db", str(db), "--insecure",
         "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file), *extra],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        cwd=Path(__file__).resolve().parents[1],
    )
    log.close()
    deadline = time.monotonic() + timeout_s
    try:
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None:
                raise RuntimeError(f"the matcher exited with {process.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the matcher did not start within {timeout_s:.0f} s")
            time.sleep(0.05)
        bound = int(port_file.read_text())
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    finally:
        port_file.unlink(missing_ok=True)
    return MatcherProcess(process, bound, log_path)
