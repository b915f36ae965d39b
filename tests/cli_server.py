"""Run the command-line programs in real, separate processes, forked from one warm server.

A fresh interpreter per command pays about 1.5 s of imports (TVM's mostly); the hostile
input tables run about a hundred commands. The server is started once (a fresh
interpreter, with the programs imported and no thread started yet) and forks a child per
command: the child changes to the command's directory, takes its environment, points
file descriptors 1 and 2 at files, and runs the program's ``main`` as the installed
command does. The parent gets what ``subprocess.run`` gives: the exit status, stdout and
stderr. Each command is still its own process, with its own state and exit.

Protocol: one JSON request per line on the server's stdin, one JSON reply per line on its
stdout (the server's own stdout is kept for that alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

_MAINS = {
    "simpletvm": "simpletvm.cli",
    "sched": "tvmsched.cli",
    "superb": "superb.cli",
}


@dataclass
class Completed:
    """The fields of ``subprocess.CompletedProcess`` the tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class CliServer:
    """The parent side: start the server once, then ``run`` commands through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-u", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})

    def run(self, prog: str, *args, cwd, env: dict[str, str], timeout: float = 120.0
            ) -> Completed:
        with tempfile.TemporaryDirectory(prefix="cli-") as scratch:
            out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
            request = {"prog": prog, "args": [str(a) for a in args], "cwd": str(cwd),
                       "env": env, "stdout": str(out), "stderr": str(err),
                       "timeout": timeout}
            with self._lock:
                self._proc.stdin.write(json.dumps(request) + "\n")
                self._proc.stdin.flush()
                reply = json.loads(self._proc.stdout.readline())
            if reply.get("timeout"):
                raise subprocess.TimeoutExpired([prog, *request["args"]], timeout)
            return Completed([prog, *request["args"]], reply["returncode"],
                             out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)


_shared: CliServer | None = None


def run_cli(prog: str, *args, cwd, env: dict[str, str], timeout: float = 120.0) -> Completed:
    """Run ``prog`` (simpletvm, sched or superb) with ``args`` through the session's
    server, started on first use and stopped when the interpreter exits."""
    global _shared
    if _shared is None:
        import atexit

        _shared = CliServer()
        atexit.register(_shared.close)
    return _shared.run(prog, *args, cwd=cwd, env=env, timeout=timeout)


def _child(request: dict) -> None:
    """In the forked child: become the command, run it, and exit with its status."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the child's whole life
        prog = request["prog"]
        sys.argv = [prog, *request["args"]]
        module = __import__(_MAINS[prog], fromlist=["main"])
        if prog == "sched":
            code = module.main(request["args"])
        else:
            module.main()
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - an uncaught error, as the interpreter reports it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - exiting anyway
                pass
        os._exit(code or 0)


def _wait(pid: int, timeout: float) -> dict:
    """The child's exit status, or a timeout after which it is killed."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.005)


def serve() -> None:
    """The server: import the programs once, then fork a child per request."""
    for module in _MAINS.values():
        __import__(module)
    # what the commands import lazily, before any thread starts: TVM, the target's
    # intrinsics, the engine, onnx and onnxruntime
    from simpletvm.intrin import preload

    preload("llvm")
    for module in ("simpletvm.engine", "simpletvm.spec", "simpletvm.onnx_prep",
                   "simpletvm.tasks_info", "tvmsched.api", "superb.runner", "onnxruntime"):
        __import__(module)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the imports or the children print never reaches the replies
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        replies.write(json.dumps(_wait(pid, request["timeout"])) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
