"""The implementation under test in a worker process, so that nothing it does can end the run.

    worker = Worker("my_kernels", timeout_s=300)
    info = worker.start()                     # {"name", "functions", "declared"}; ImplementationError if it fails
    run = worker.run(case, torch.device("cpu"), checks)    # an impl_call.ImplRun, always
    worker.close()

One worker (a fresh `python -m mlaverify.verify.worker` talking over a socket pair, so CUDA works in
it and the caller's main module is never re-imported) imports the implementation once and serves
every case; the engine sends a `Case` (the worker materializes its own inputs from the case's seed)
and gets back the outputs as CPU tensors with the behavioural checks. When the worker exits
(`os._exit`, a C library calling `exit`), aborts, segfaults, or gives no result within the per-case
timeout, that case fails with a reason naming what happened ("implementation exited with status 0
during the call", "killed by SIGSEGV", "no result after 300 s"), the worker is killed if need be,
and a fresh one is started for the next case. `sys.exit()` inside the call is caught in the worker
and fails the case too. The worker ignores SIGINT: Ctrl-C is the engine's to handle (it stops the
run, kills the worker and writes the report of the cases done so far).
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Sequence

from mlaverify.verify.cases import Case
from mlaverify.verify.impl_call import ImplRun
from mlaverify.verify.implementations import ImplementationError

__all__ = ["Worker", "describe_exit", "IMPORT_TIMEOUT_S"]

IMPORT_TIMEOUT_S = 600.0   # importing an implementation may build kernels; a hung import still ends
_POLL_S = 0.5              # how often a waiting engine looks at whether the worker is still alive
_EOF = ("eof", None)       # _receive: the worker is gone


def _send(conn: Connection, message: object) -> None:
    """Plain pickle over the socket: multiprocessing's own pickler would share tensors through file
    descriptors and an authentication key the two processes do not share."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> object:
    return pickle.loads(conn.recv_bytes())


def describe_exit(exitcode: int | None) -> str:
    """'exited with status N' or 'killed by SIGSEGV' for a worker's exit code."""
    if exitcode is None:
        return "stopped responding"
    if exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        return f"was killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"was killed by signal {-exitcode}"


def _serve(conn, spec: str, threads: int | None) -> None:
    """The worker's main loop (runs in the child process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the engine
    import torch

    from mlaverify.verify.impl_call import implementation_side
    from mlaverify.verify.implementations import api_functions, import_implementation

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        module = import_implementation(spec)
    except ImplementationError as exc:
        _send(conn, ("import_error", str(exc)))
        return
    declared = getattr(module, "MLAVERIFY_CAPABILITIES", None)
    try:
        env = {"triton_interpret": os.environ.get("TRITON_INTERPRET"),  # as the implementation left them
               "triton_default_fp_fusion": os.environ.get("TRITON_DEFAULT_FP_FUSION")}
        _send(conn, ("loaded", {"name": module.__name__, "functions": sorted(api_functions(module)),
                                "declared": declared, "env": env}))
    except Exception as exc:  # an unpicklable MLAVERIFY_CAPABILITIES
        _send(conn, ("import_error", f"implementation {spec!r}: MLAVERIFY_CAPABILITIES cannot be sent to the "
                                   f"engine ({type(exc).__name__}: {exc}); use plain dicts, lists and numbers"))
        return
    while True:
        try:
            message = _recv(conn)
        except EOFError:
            return
        if message is None:
            return
        case, device, checks = message
        try:
            run = implementation_side(module, case, torch.device(device), checks)
        except BaseException as exc:  # KeyboardInterrupt raised by the implementation itself, and the like
            from mlaverify.verify.impl_call import describe_exception

            run = ImplRun(None, f"implementation raised {describe_exception(exc)}")
        try:
            payload = pickle.dumps(("result", run), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            payload = pickle.dumps(("result", ImplRun(None, f"its outputs cannot be sent back to the engine: "
                                                            f"{type(exc).__name__}: {exc}")))
        conn.send_bytes(payload)


class Worker:
    """Engine-side handle of the worker process (see the module docstring)."""

    mode = "subprocess"

    def __init__(self, spec: str, timeout_s: float | None = None, threads: int | None = None) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self.threads = threads
        self._process = None
        self._conn = None
        self.info: dict[str, Any] | None = None
        self.restarts = 0

    # ---- process management -------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the worker and import the implementation in it; raises ImplementationError."""
        ours, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "mlaverify.verify.worker", str(theirs.fileno()), self.spec,
                "" if self.threads is None else str(self.threads)]
        try:
            process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), cwd=os.getcwd())
        except OSError as exc:
            ours.close()
            raise ImplementationError(f"implementation {self.spec!r}: cannot start a worker process ({exc})") from None
        finally:
            theirs.close()
        self._process, self._conn = process, Connection(ours.detach())
        reply = self._receive(IMPORT_TIMEOUT_S)
        if reply is None or reply[0] != "loaded":
            what = (reply[1] if reply is not None and reply[0] == "import_error" else
                    f"implementation {self.spec!r} {self._death('while being imported', IMPORT_TIMEOUT_S)}")
            self._kill()
            raise ImplementationError(what)
        self.info = reply[1]
        return self.info

    def close(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            try:
                _send(conn, None)
            except (OSError, EOFError, BrokenPipeError):
                pass
        if process is not None:
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        if conn is not None:
            conn.close()

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _kill_process(self) -> None:
        if self._alive():
            self._process.kill()
            self._process.wait(timeout=5.0)

    def _kill(self) -> None:
        self._kill_process()
        self.close()

    def _receive(self, timeout_s: float | None):
        """The worker's next message; ``_EOF`` when it died, None when it gave nothing within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            try:
                if self._conn.poll(wait):
                    return _recv(self._conn)
            except (EOFError, OSError):
                return self._reap()
            if not self._alive():
                try:  # it may have sent its last words just before exiting
                    return _recv(self._conn) if self._conn.poll(0) else self._reap()
                except (EOFError, OSError):
                    return self._reap()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _reap(self):
        """The worker closed its end: wait for its exit status (it is exiting), then report _EOF."""
        try:
            self._process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5.0)
        return _EOF

    def _death(self, during: str, timeout_s: float | None) -> str:
        process = self._process
        if self._alive():
            return f"gave no result after {timeout_s:g} s {during}"
        return f"{describe_exit(process.returncode if process is not None else None)} {during}"

    @property
    def environment(self) -> dict[str, Any]:
        """What the worker's environment says about the implementation's mode (Triton's variables)."""
        return dict((self.info or {}).get("env") or {})

    # ---- running cases ------------------------------------------------------------------------
    def run(self, case: Case, device, checks: Sequence[str]) -> ImplRun:
        if self._process is None:  # the previous worker died: start afresh for this case
            self.restarts += 1
            try:
                self.start()
            except ImplementationError as exc:
                return ImplRun(None, f"the worker could not be restarted: {exc}")
        try:
            _send(self._conn, (case, str(device), list(checks)))
        except (OSError, BrokenPipeError) as exc:
            what = self._death("before the call", self.timeout_s)
            self._kill()
            return ImplRun(None, f"implementation {what} ({type(exc).__name__})")
        try:
            reply = self._receive(self.timeout_s)
        except KeyboardInterrupt:
            self._kill()  # the user stopped the run: the worker goes with it
            raise
        if reply is None:
            self._kill()
            return ImplRun(None, f"no result after {self.timeout_s:g} s: the implementation was stopped "
                                 "(raise --timeout if the case is just slow)")
        if reply is _EOF:
            what = self._death("during the call", self.timeout_s)
            self.close()
            return ImplRun(None, f"implementation {what}")
        return reply[1]


def _main(argv: list[str]) -> None:
    fd, spec, threads = int(argv[0]), argv[1], argv[2]
    _serve(Connection(fd), spec, int(threads) if threads else None)


if __name__ == "__main__":
    _main(sys.argv[1:])
