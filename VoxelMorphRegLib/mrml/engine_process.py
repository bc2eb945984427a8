"""An engine command in its own process group, its output read line by line (Qt-free).

:class:`EngineProcess` is what a long-running engine job needs from the operating system:

* the command runs in a new process group (a new session on POSIX), so that everything it
  starts can be signalled or killed together, and never gets the terminal's Ctrl-C;
* stdout and stderr are merged and read on a daemon thread; :meth:`EngineProcess.read_lines`
  hands over the complete lines received so far, never blocking;
* :meth:`EngineProcess.interrupt` sends SIGINT to the whole group (the engine turns it into
  ``KeyboardInterrupt``: a training saves ``last.pt``); :meth:`EngineProcess.kill` kills the
  whole tree at once (:func:`kill_tree`: the process group on POSIX, ``taskkill /T`` on Windows);
* when the process has ended, members of its group that are still alive are killed before the
  process is reaped (while its zombie still holds the group id, so the id cannot have been
  reused), so a finished job never leaves a stray process behind.

Both runners use it: the registration runner (:mod:`.runner`, cancel = :meth:`~EngineProcess.kill`)
and the training runner (:mod:`.training_runner`, stop = :meth:`~EngineProcess.interrupt`, then
:meth:`~EngineProcess.kill`).
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


def _popen_group_options() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def kill_tree(process: subprocess.Popen) -> None:
    """Kill the process and every process it started, at once."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            check=False,
        )
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass


def sigint_ignored() -> bool:
    """Whether SIGINT is ignored in this process (POSIX); a child started now would inherit that."""
    if os.name == "nt":
        return False
    try:
        return signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    except (ValueError, AttributeError):
        return False


_RESTORE_SIGINT = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "


def with_sigint_restored(command: list[str]) -> list[str]:
    """The same command, made to turn SIGINT into ``KeyboardInterrupt`` even if SIGINT is ignored here.

    A process that starts with SIGINT ignored (e.g. launched in the background by a
    non-interactive shell) passes that on to its children, and Python then never raises
    ``KeyboardInterrupt``. ``PYTHON -m MODULE ARGS`` and ``PYTHON SCRIPT.py ARGS`` become
    ``PYTHON -c <restore SIGINT, run MODULE/SCRIPT as __main__> ARGS``, which runs the same
    code with the same ``sys.argv[1:]``; other commands are returned unchanged.
    """
    command = [str(part) for part in command]
    if len(command) >= 3 and command[1] == "-m":
        code = _RESTORE_SIGINT + f"runpy.run_module({command[2]!r}, run_name='__main__', alter_sys=True)"
        return [command[0], "-c", code] + command[3:]
    if len(command) >= 2 and command[1].endswith(".py"):
        code = _RESTORE_SIGINT + f"sys.argv[0] = {command[1]!r}; runpy.run_path({command[1]!r}, run_name='__main__')"
        return [command[0], "-c", code] + command[2:]
    return command


def _exited_unreaped(pid: int):
    """``True`` if the child ``pid`` has exited and is not reaped yet, ``False`` if it runs, ``None`` if unknown."""
    if os.name == "nt" or not hasattr(os, "waitid") or not hasattr(os, "WNOWAIT"):
        return None
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    except OSError:
        return None
    return info is not None


class EngineProcess:
    """One engine command: start, read its lines, interrupt or kill its whole tree, get its exit code."""

    def __init__(self, command, cwd=None, env=None):
        self.command = [str(part) for part in command]
        self.cwd = None if cwd is None else str(cwd)
        self.env = env
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.interrupted = False
        self.killed = False
        self._lines: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._ended_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.returncode is None

    def start(self) -> "EngineProcess":
        """Start the command (raises ``OSError`` when it cannot be started)."""
        command = with_sigint_restored(self.command) if sigint_ignored() else self.command
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=self.env,
            **_popen_group_options(),
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

    def poll(self) -> int | None:
        """The exit code once the process has ended and its output has been read, else ``None``.

        On POSIX, members of the process group still alive when the process has ended are
        killed first (they would otherwise outlive the job).
        """
        if self.process is None or self.returncode is not None:
            return self.returncode
        if self.process.returncode is None:
            exited = _exited_unreaped(self.process.pid)
            if exited is False:
                return None
            if exited:
                self._kill_group()
            if self.process.poll() is None:
                return None
        if self._ended_at is None:
            self._ended_at = time.monotonic()
        if self._reader is not None and self._reader.is_alive() and time.monotonic() - self._ended_at < OUTPUT_GRACE_S:
            return None
        self.returncode = self.process.returncode
        return self.returncode

    def _kill_group(self) -> None:
        if os.name == "nt":
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def interrupt(self) -> bool:
        """Send SIGINT to the whole process group (POSIX). ``False`` where that is not possible (Windows)."""
        if self.process is None or self.process.poll() is not None:
            return False
        if os.name == "nt":
            return False
        try:
            os.killpg(self.process.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError, OSError):
            return False
        self.interrupted = True
        return True

    def kill(self) -> None:
        """Kill the process and everything it started, at once."""
        if self.process is None:
            return
        self.killed = True
        kill_tree(self.process)

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> int | None:
        """Block until :meth:`poll` returns the exit code (or ``timeout`` seconds have passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(interval)
        return self.returncode

