"""An engine command in its own process group, its output read line by line (Qt-free).

:class:`EngineProcess` is what a long-running engine job needs from the operating system:

* the command runs in a new process group (a new session on POSIX), so that everything it
  starts can be killed together, and never gets the terminal's Ctrl-C;
* stdout and stderr are merged and read on a daemon thread; :meth:`EngineProcess.read_lines`
  hands over the complete lines received so far, never blocking;
* its standard input is a pipe: :meth:`EngineProcess.request_stop` writes ``stop`` there, which
  the engine (started with ``--stop-on-stdin``) reads itself -- a training then saves
  ``last.pt`` and exits. No signal is involved: inside a Slicer install the command is
  ``PythonSlicer``, a launcher (CTKAppLauncher) that runs ``python-real`` as a child, passes its
  standard input on, and dies at once on SIGINT. If this process ends, the pipe closes and the
  engine stops too (it never outlives the application for long);
* :meth:`EngineProcess.kill` kills the whole tree at once (:func:`kill_tree`: the process group on
  POSIX, ``taskkill /T`` on Windows);
* the job is over when the *engine* is, not the launcher: a launcher that ended by a signal
  while the rest of its group still runs (the engine saving ``last.pt``) is followed by waiting
  for the engine (:attr:`EngineProcess.engine_pid`, which the runner learns from the engine's
  ``started`` event; without it, for the group to empty), up to
  :attr:`EngineProcess.orphan_timeout_s`. After a normal end,
  members of the group still alive are strays: they are killed (before the process is reaped
  where ``os.waitid`` can tell, so the group id cannot have been reused; on macOS, which has no
  ``os.waitid``, after reaping, while the surviving members keep the id from reuse).

Both runners use it: the registration runner (:mod:`.runner`, cancel = :meth:`~EngineProcess.kill`)
and the training runner (:mod:`.training_runner`, stop = :meth:`~EngineProcess.request_stop`,
then :meth:`~EngineProcess.kill` if the engine does not end in time).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

# After the process ended, how long to wait for the end of its output (a process outside the
# group could hold the pipe open; its output is then given up).
OUTPUT_GRACE_S = 5.0
# How long to wait for the rest of the group after the launcher was ended by a signal.
ORPHAN_TIMEOUT_S = 120.0
STOP_LINE = b"stop\n"


def popen_group_options() -> dict:
    """Popen options that start the command in a new process group (a new session on POSIX)."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def kill_tree(process: subprocess.Popen) -> None:
    """Kill the process and every process it started, at once (the process must not be reaped yet)."""
    if process.returncode is not None:
        return
    if os.name == "nt":
        if process.poll() is not None:
            return
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            check=False,
        )
    else:
        # An exited but unreaped leader still holds the group id: the group can be killed safely.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still exists (POSIX; ``False`` elsewhere)."""
    if os.name == "nt":
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: it exists
        return True
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # Linux: a zombie nobody has reaped yet has ended
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _exit_state(pid: int):
    """How the unreaped child ``pid`` stands: ``"running"``, ``"exited"``, ``"signalled"``, or ``None`` if unknown."""
    if os.name == "nt" or not hasattr(os, "waitid") or not hasattr(os, "WNOWAIT"):
        return None
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return "running"
    return "exited" if info.si_code == getattr(os, "CLD_EXITED", 1) else "signalled"


class EngineProcess:
    """One engine command: start, read its lines, ask it to stop, kill its whole tree, get its exit code."""

    def __init__(self, command, cwd=None, env=None, orphan_timeout_s: float = ORPHAN_TIMEOUT_S):
        self.command = [str(part) for part in command]
        self.cwd = None if cwd is None else str(cwd)
        self.env = env
        self.orphan_timeout_s = float(orphan_timeout_s)
        # The engine's own process id, once it has said it (contract.Started): behind a launcher it is
        # not this process's. Known, it is what is waited for when the launcher ends by a signal.
        self.engine_pid: int | None = None
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.stop_requested = False
        self.killed = False
        self.waited_for_orphans = False  # the launcher ended by a signal and the engine was waited for
        self._lines: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._ended_at: float | None = None
        self._leader_signalled = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.returncode is None

    def start(self) -> "EngineProcess":
        """Start the command (raises ``OSError`` when it cannot be started)."""
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
            **popen_group_options(),
        )
        self._reader = threading.Thread(target=self._read_output, name="VoxelMorphReg engine output", daemon=True)
        self._reader.start()
        return self

    def _read_output(self) -> None:
        stream = self.process.stdout
        pending = b""
        try:
            while True:
                chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
                if not chunk:
                    break
                pending += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._lines.put(line.decode("utf-8", "replace"))
            if pending:
                self._lines.put(pending.decode("utf-8", "replace"))
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def read_lines(self) -> list[str]:
        """Complete output lines received since the last call (never blocks)."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def _close_stdin(self) -> None:
        stdin = self.process.stdin if self.process is not None else None
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass

    def request_stop(self) -> bool:
        """Write ``stop`` to the engine's standard input (then close it). ``False`` if it has ended or the pipe is gone."""
        if self.process is None or self.returncode is not None:
            return False
        self.stop_requested = True
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return False
        try:
            stdin.write(STOP_LINE)
            stdin.flush()
            written = True
        except (OSError, ValueError):  # broken pipe: nobody reads it any more
            written = False
        self._close_stdin()
        return written

    def poll(self) -> int | None:
        """The exit code once the engine (the process and its group) has ended and its output is read, else ``None``.

        See the module docstring for how a launcher ended by a signal and stray processes are handled.
        """
        if self.process is None or self.returncode is not None:
            return self.returncode
        if self.process.returncode is None:
            state = _exit_state(self.process.pid)
            if state == "running":
                return None
            if state == "exited":
                self._kill_group()  # strays, while the unreaped leader holds the group id
            if self.process.poll() is None:
                return None
        if self._ended_at is None:
            self._ended_at = time.monotonic()
            self._leader_signalled = os.name != "nt" and self.process.returncode < 0
        if os.name != "nt" and group_alive(self.process.pid):
            # Reaped leader, living members: the group id stays theirs until the last one ends.
            if self._leader_signalled and not self.killed and time.monotonic() - self._ended_at < self.orphan_timeout_s:
                engine_alive = pid_alive(self.engine_pid) if self.engine_pid else True
                if engine_alive:
                    self.waited_for_orphans = True
                    return None  # the launcher is gone, the engine is still finishing (e.g. saving last.pt)
            self._kill_group()  # strays (or an engine that took too long)
            self._ended_at = time.monotonic()  # give the output of the killed ones its grace too
        if self._reader is not None and self._reader.is_alive() and time.monotonic() - self._ended_at < OUTPUT_GRACE_S:
            return None
        self._close_stdin()
        self.returncode = self.process.returncode
        return self.returncode

    def _kill_group(self) -> None:
        if os.name == "nt":
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def kill(self) -> None:
        """Kill the process and everything it started, at once."""
        if self.process is None:
            return
        self.killed = True
        if self.process.returncode is None:
            kill_tree(self.process)
        else:
            self._kill_group()  # the leader is reaped: what is left of its group

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> int | None:
        """Block until :meth:`poll` returns the exit code (or ``timeout`` seconds have passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(interval)
        return self.returncode
