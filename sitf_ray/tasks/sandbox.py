"""Run untrusted, model-written Python (MBPP / HumanEval completions) and decide pass/fail.

Two entry points:

* ``run_program(code)`` runs a program in a child process with OS-level containment only and reports
  its exit status (``passed`` means exit code 0; a program can trivially claim that).
* ``check_program(solution, tests)`` runs the solution followed by the tests inside a trusted harness
  and reports ``passed`` only when the harness itself saw every test run and succeed. Use this for
  rewards and accuracy: a program that exits early, kills its parent or prints a success marker fails.

Containment (both entry points)
-------------------------------
* One child process per program, started in a new session.
* Time: ONE limit per program, ``cpu_seconds`` of CPU time (default ``CPU_SECONDS`` = 10 s; a few MBPP
  gold solutions need ~1 s), enforced by RLIMIT_CPU in the child (SIGXCPU, status ``timeout``, detail
  ``CPU time limit (N s)``); the parent also sums the CPU time of the program's whole process tree
  every 0.5 s and kills it past the limit, so forking does not multiply it. CPU time does not run out
  faster when programs share cores, so the verdict is the same alone, under the pipeline's concurrency
  (4 programs at once) or under any other load. A program that waits without computing (sleep, a
  blocked read) uses no CPU: a wall clock of ``wall_backstop(cpu_seconds)`` = 4 x cpu_seconds + 10 s
  (``timeout=`` overrides it) kills its whole process group (detail ``wall-clock limit (N s): ...``).
  At that deadline a program that is still computing (its process tree used more than 2 % of a core
  since the last look, read from /proc) gets more time, up to 3 x the backstop (150 s by default), so a
  CPU-bound program ends on its CPU limit even on a heavily loaded machine (it needs 1/15 of a core),
  and one that mostly sleeps is still bounded.
* A throw-away temporary directory is the working directory and HOME; it is deleted
  afterwards. stdin is /dev/null. The environment is built from scratch (PATH, LANG, HOME, TMPDIR,
  PYTHONHASHSEED=0 so set/dict order and hence verdicts are reproducible): nothing of the parent's
  environment (tokens, keys) is passed through.
* Resource limits are set by the harness inside the child before any untrusted code runs:
  RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE and RLIMIT_CORE=0.
  stdout is kept up to ``output_bytes`` (head), stderr as its last ``output_bytes`` (tail); output is
  read in chunks so a huge output never sits in memory, and a program printing more than 256 x
  ``output_bytes`` is killed.
* Isolation with bubblewrap (Debian package ``bubblewrap``) when ``bwrap`` works here (probed once):
  new PID, network, IPC, UTS and mount namespaces, ``--die-with-parent``, ``--new-session``. The new
  root holds only read-only binds of /usr (plus the /bin, /lib* links), the ld.so cache and the
  Python installation (``sys.base_prefix`` of this venv, resolved through its symlinks); /tmp is a
  private tmpfs, /proc and /dev are fresh, and the only writable host path is the work directory,
  mounted at /sandbox. So the program cannot reach the network (not even 127.0.0.1), cannot see or
  signal host processes (``getppid()`` is the namespace's init), cannot read the project, home
  directories or secrets on disk, and cannot write anywhere on the host but its own work directory.
  When this process runs as root, the harness additionally drops to a random unprivileged uid (bwrap
  is given only CAP_SETUID/CAP_SETGID for that, and every capability is gone after the switch),
  because the kernel never applies RLIMIT_NPROC to uid 0: with the fresh uid a fork bomb stops at
  ``max_procs``. As a normal user, bwrap runs in a user namespace and RLIMIT_NPROC is counted per
  namespace (Linux >= 5.14).
* Without a working bwrap we fall back to rlimits only, with one loud warning, and report
  ``isolated=False``. The fallback does NOT stop network access, reading files the user can read,
  writing the user's files, or (in ``run_program``) killing the parent. As root it drops to a fresh
  uid only when the Python installation is readable by others; otherwise RLIMIT_NPROC is void.

Pass verdict of ``check_program`` (threat model)
------------------------------------------------
The solution runs in the same interpreter as its tests (it has to: the tests call its functions), so
the harness has to assume the solution is hostile to the verdict. What decides ``passed``:

1. The parent makes a random 128-bit nonce per run and hands it to the harness on an inherited pipe.
   The harness reads it and closes the pipe *before* any untrusted code runs; the nonce lives only in
   a local of the harness, never in argv, the environment, a file or a global.
2. ``passed`` requires exit status 0 AND the last line on a separate result pipe being
   ``SITF-PASS <nonce> <n>``, which the harness writes only after the tests ran to the end without
   any exception (BaseException included: SystemExit, KeyboardInterrupt) AND every assert site that
   must run (top-level asserts and those directly in ``def check``) ran at least once. So
   ``sys.exit(0)``, ``os._exit(0)``, ``raise SystemExit(0)``, dying by a signal, ``atexit`` tricks or
   printing any marker (the program does not know the nonce) all count as failed.
3. The tests are compiled before the solution runs and rewritten (``sandbox_harness._rewrite``) so that
   every operation the test code itself performs, inside asserts or not, goes through the harness, on
   *plain values*: canonical copies made only of builtin types (int, float, str, list, dict, set,
   tuple, ... ; subclasses such as namedtuple, IntEnum or a float subclass are converted with the
   builtin base type's own C methods), or instances of C types (their methods are C code).
   Comparisons (``==``, ``<``, ``in``, ...), truth tests (assert, if, while, ternaries,
   comprehension filters, ``not``, ``and``/``or``), arithmetic (``+ - * / // % ** @ << >> & | ^``,
   unary ``- + ~``) and calls of C functions that read a value (``abs``, ``round``, ``len``, ``str``,
   ``repr`` excepted, ``hash``, ``bool``, ``int``, ``float``, ``sorted``, ``sum``, ``min``, ``max``,
   ``any``, ``all``, ``set``, ``math.isclose``, ``math.fabs``, ``list.count``/``index``, ...; the
   items of a generator passed to them included) never call a method of an object whose class was made
   in Python: compared with anything (plain data or another such object) it is unequal, and any other
   operation on it raises TypeError, so the test fails. So every "dunder lie" (``__eq__``/``__lt__``/
   ``__bool__`` that always succeed, ``__sub__``/``__abs__``/``__mod__`` returning 0 for
   ``abs(f(x) - y) < tol``, ``__hash__``, ``__str__``, ``__len__``, ``__float__``, ``__round__``,
   ``__index__``, a lying ``__class__`` for ``isinstance``) is never asked. Objects of Python classes
   may still be built by the tests and passed to the solution's functions (MBPP's test_setup_code
   builds trees of the solution's Node class), and their attributes read (``root.left.v == 2``). The
   assert statement itself raises the interpreter's own AssertionError (bytecode
   LOAD_ASSERTION_ERROR), so replacing ``builtins.AssertionError`` changes nothing.
4. Tests see a private copy of the builtins taken before the solution ran, and before each assert the
   harness restores the module dicts (and ``sys.modules`` entries) of builtins, math, re,
   collections, itertools, functools, heapq, ... so monkeypatching e.g. ``math.isclose`` or
   ``builtins.sorted`` does not leak into the tests. The harness keeps its own references to
   ``os.write``/``os._exit`` etc., taken before the solution ran.
5. An audit hook (PEP 578, cannot be removed from Python code) installed before the solution runs
   blocks the usual ways to reach the nonce or the harness state: frame access (``sys._getframe``,
   ``tb_frame``, ``gi_frame``/``cr_frame``/``ag_frame``, ``sys._current_frames``), tracing and
   profiling hooks, ``gc.get_objects``/``get_referrers``/``get_referents``, ctypes, signals (a signal
   handler receives the current frame), new audit hooks, crafting code objects, opening anything
   under /proc, /sys or /dev/fd, symlinks, and starting processes, sending signals or opening
   sockets. The harness is also made non-dumpable, so another process of the same uid cannot read its
   memory through /proc/<pid>/mem.

What is NOT prevented: this is a guard against reward hacking by a policy model, not a proof against
a deliberate attacker who studies this harness. Known gaps: hand-written bytecode
(``marshal.loads``) that reads interpreter memory; a test that passes a function *defined in the
test code* to the solution (2 of 974 MBPP tasks pass a lambda) lets the solution reach the tests'
globals through ``__globals__``; re-patching a stdlib module from inside a call while one assert is
being evaluated (restoration happens between asserts, and only for the listed modules); a helper that
the tests call but the *solution* defines (HumanEval/32's ``poly`` comes with the prompt, and a
completion can rebind it) runs unguarded; augmented assignment (``total += f(x)``) and subscripts
(``f(x)[0]``) run natively (their results are still checked when compared); a dict lookup with a
solution-made key (``d[f(x)]``) uses its ``__hash__``/``__eq__``; a ``functools.partial`` of a C
function is called as it is; bound methods of containers other than ``count``/``index``/``remove``
and the comparison dunders. A legitimate but unusual solution can be failed by the hardening:
returning an object of a pure-Python class (e.g. ``fractions.Fraction``, or a class with an honest
``__eq__``) that the tests compare with anything, even an equal object of the same class, add to or pass
to ``abs``/``round``/``str``/... (attributes, ``repr`` and ``format`` still work), or using
frames/tracebacks/signals itself (``sys._getframe`` raises ValueError, which namedtuple, typing and
logging tolerate). The gold solutions of all MBPP and HumanEval tasks pass
(``tests/test_sandbox.py::test_every_gold_solution_passes``, slow).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")
_SANDBOX_DIR = "/sandbox"          # the work directory as seen inside bwrap
_RESULT_CAP = 4096                 # bytes kept from the harness's result pipe
_HARD_OUTPUT_FACTOR = 256          # kill a program that prints more than this x output_bytes
_UID_RANGE = (1_500_000_000, 1_600_000_000)   # fresh uids for root runs (no real user has these)
CPU_SECONDS = 10                   # the time limit of one program: CPU seconds (RLIMIT_CPU)


def wall_backstop(cpu_seconds: float) -> float:
    """Wall-clock seconds after which a program is killed although it has CPU time left (it is waiting)."""
    return 4.0 * cpu_seconds + 10.0


@dataclass
class SandboxResult:
    status: str                    # 'passed' | 'failed' | 'timeout' | 'error'
    returncode: Optional[int]
    stdout: str                    # head, at most output_bytes
    stderr: str                    # tail, at most output_bytes
    seconds: float
    isolated: bool                 # True when bubblewrap was used
    detail: str = ""               # why it failed (harness verdict, limit hit), '' when passed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------------ harness
# The trusted harness is real Python in sandbox_harness.py; it is sent to the child as text (never
# imported here: it runs only in the child, where __name__ == "sitf_harness").
_HARNESS = (Path(__file__).parent / "sandbox_harness.py").read_text(encoding="utf-8")

_BOOTSTRAP = ("import builtins\nexec(compile({src!r}, '<sitf-harness>', 'exec'), "
              "{{'__builtins__': builtins.__dict__.copy(), '__name__': 'sitf_harness'}})\n")


# ------------------------------------------------------------------------------------- isolation
_probe_lock = threading.Lock()
_probe_result: Optional[bool] = None


def _python_paths() -> tuple[str, list[str]]:
    """The real interpreter (venv symlinks resolved) and the install prefixes it needs."""
    exe = os.path.realpath(sys.executable)
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                os.path.dirname(os.path.dirname(exe))}
    return exe, sorted(p for p in prefixes if p and p != "/")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _bwrap_argv(workdir: str, as_root: bool) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    a = [bwrap, "--die-with-parent", "--new-session"]
    if as_root:   # no user namespace: the harness switches to a real fresh uid (see module doc)
        a += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        a += ["--unshare-all"]
    a += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            a += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            a += ["--ro-bind", top, top]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        a += ["--ro-bind-try", f, f]
    made: set[str] = set()
    for prefix in _python_paths()[1]:
        if _under(prefix, "/usr"):
            continue
        parent, parts = "", prefix.strip("/").split("/")[:-1]
        for part in parts:   # world-traversable parents, even when the host has /root at 0700
            parent += "/" + part
            if parent not in made:
                made.add(parent)
                a += ["--perms", "0755", "--dir", parent]
        a += ["--ro-bind", prefix, prefix]
    a += ["--perms", "1777", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
          "--bind", workdir, _SANDBOX_DIR, "--chdir", "/"]
    return a


def _python_world_readable() -> bool:
    """Can another uid run this Python (needed to drop privileges without bwrap)?"""
    for prefix in _python_paths()[1]:
        p = prefix
        while True:
            try:
                mode = os.stat(p).st_mode
            except OSError:
                return False
            if not mode & stat.S_IXOTH:
                return False
            if p == "/":
                break
            p = os.path.dirname(p)
    return True


def bwrap_available() -> bool:
    """True when bubblewrap works here (probed once per process, with the flags we really use)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            problem = _probe()
            _probe_result = problem is None
            if problem is None:
                log.info("sitf sandbox: bubblewrap isolation enabled (%s)", shutil.which("bwrap"))
            else:   # the one loud line
                warnings.warn("sitf sandbox: bubblewrap isolation unavailable (" + problem + "); untrusted "
                              "code runs with rlimits only: no network, filesystem or PID isolation. "
                              "Install the Debian package 'bubblewrap'.", RuntimeWarning, stacklevel=2)
        return _probe_result


def _probe() -> Optional[str]:
    """None when a trivial program runs under bwrap with our exact flags, else what went wrong."""
    if shutil.which("bwrap") is None:
        return "bwrap not found on PATH"
    try:
        res = _execute({"mode": "run", "code": "print('ok')"}, isolated=True, timeout=30.0,
                       limits=_limits(5, 512, 8, 32), output_bytes=4096)
    except OSError as e:
        return f"cannot start bwrap: {e}"
    if res.status != "passed" or res.stdout.strip() != "ok":
        return "bwrap probe failed: " + (res.stderr or res.detail).strip()[-300:]
    return None


def sandbox_info() -> dict:
    """How programs are contained on this machine (for logs and for skipping tests)."""
    isolated = bwrap_available()
    root = os.geteuid() == 0
    drop = root and (isolated or _python_world_readable())
    return {"isolated": isolated, "root": root, "drops_uid": drop,
            "nproc_enforced": drop or not root, "bwrap": shutil.which("bwrap")}


# ------------------------------------------------------------------------------------- execution
def _limits(cpu_seconds: int, memory_mb: int, max_file_mb: int, max_procs: int) -> dict:
    if int(cpu_seconds) != cpu_seconds or cpu_seconds < 1:
        raise ValueError(f"cpu_seconds must be a whole number of seconds >= 1 (RLIMIT_CPU), got {cpu_seconds!r}")
    return {"cpu": int(cpu_seconds), "mem": int(memory_mb) << 20, "fsize": int(max_file_mb) << 20,
            "nproc": int(max_procs), "nofile": 256}


def _rmtree(path: str) -> None:
    """Delete the work dir even if the program chmod-ed things read-only."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _execute(payload: dict, *, isolated: bool, timeout: float, limits: dict, output_bytes: int,
             nonce: Optional[str] = None) -> SandboxResult:
    """Start one harness process, collect capped output, enforce the wall clock, clean up."""
    t0 = time.monotonic()
    root = os.geteuid() == 0
    drop = root and (isolated or _python_world_readable())
    workdir = tempfile.mkdtemp(prefix="sitf-sbx-")
    fds_to_close: list[int] = []
    try:
        uid = secrets.SystemRandom().randrange(*_UID_RANGE) if drop else None
        if uid is not None:
            os.chown(workdir, uid, uid)
        inner = _SANDBOX_DIR if isolated else workdir
        payload = dict(payload, limits=limits)
        pass_fds: tuple[int, ...] = ()
        result_r = None
        if nonce is not None:
            nonce_r, nonce_w = os.pipe()
            os.write(nonce_w, nonce.encode("ascii") + b"\n")
            os.close(nonce_w)
            result_r, result_w = os.pipe()
            fds_to_close += [nonce_r, result_w, result_r]
            payload.update(nonce_fd=nonce_r, result_fd=result_w)
            pass_fds = (nonce_r, result_w)
        ppath = os.path.join(workdir, "payload.json")
        fd = os.open(ppath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        if uid is not None:
            os.chown(ppath, uid, uid)
        exe = _python_paths()[0]
        argv = [exe, "-s", "-S", "-B", "-c", _BOOTSTRAP.format(src=_HARNESS), inner + "/payload.json",
                "-" if uid is None else str(uid)]
        if isolated:
            argv = _bwrap_argv(workdir, root) + argv
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": inner, "TMPDIR": "/tmp" if isolated else workdir, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=pass_fds, env=env,
                                cwd=workdir, start_new_session=True)
        for fd in fds_to_close[:2]:   # the child's ends of the pipes: only it may hold them now
            os.close(fd)
        fds_to_close = fds_to_close[2:]
        try:
            out, err, res, why, deadline = _collect(proc, result_r, t0 + timeout, output_bytes, limits["cpu"])
            if why:
                _kill(proc)
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()) if not why else 5)
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc = proc.wait()
                why = why or "timeout"
        except BaseException:   # e.g. KeyboardInterrupt: never leave the program running
            _kill(proc)
            proc.wait()
            raise
        return _verdict(payload["mode"], rc, out, err, res, why, nonce, time.monotonic() - t0,
                        isolated, output_bytes, limits["cpu"], timeout)
    finally:
        for fd in fds_to_close:
            try:
                os.close(fd)
            except OSError:
                pass
        _rmtree(workdir)


_TICKS = os.sysconf("SC_CLK_TCK")
_BUSY = 0.02        # a program using more than this share of a core is computing, not waiting


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by process `pid` and all its descendants (bwrap, the harness, its children)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])      # utime, stime
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / _TICKS


def _collect(proc, result_r, deadline, cap, cpu_limit):
    """Read stdout (head), stderr (tail) and the result pipe without ever holding more than the caps.

    At the wall-clock deadline a program still computing (more than _BUSY of a core since the last look)
    gets more time, up to 3x the backstop, so that on a loaded machine it ends on its CPU limit; one
    that waits is stopped. Every 0.5 s the process tree's CPU time is summed: past `cpu_limit` it is
    killed (RLIMIT_CPU alone counts each process apart, so a program could spread over several).
    Returns (stdout, stderr, result, why, the deadline in force)."""
    start = time.monotonic()
    hard = start + 3 * max(0.0, deadline - start)
    step = max(1.0, (deadline - start) / 4)
    last_t, last_cpu, next_look = start, 0.0, start + 0.5
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    if result_r is not None:
        streams[result_r] = "res"
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    out, err, res = bytearray(), bytearray(), bytearray()
    total, why = 0, ""
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= next_look:
                next_look = now + 0.5
                if _tree_cpu(proc.pid) > cpu_limit + 0.5:
                    why = "cpu"
                    break
            if now >= deadline:
                cpu = _tree_cpu(proc.pid)
                if now < hard and cpu - last_cpu > _BUSY * (now - last_t):
                    deadline, last_t, last_cpu = min(hard, now + step), now, cpu
                    continue
                why = "timeout"
                break
            remaining = min(deadline, next_look) - now
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                kind = streams[key.fd]
                if kind == "out":
                    if len(out) < cap:
                        out += chunk[:cap - len(out)]
                elif kind == "err":
                    err += chunk
                    if len(err) > cap:
                        del err[:len(err) - cap]
                else:
                    if len(res) < _RESULT_CAP:
                        res += chunk[:_RESULT_CAP - len(res)]
                total += len(chunk)
                if total > cap * _HARD_OUTPUT_FACTOR:
                    why = "output"
                    break
            if why:
                break
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(out), bytes(err), bytes(res), why, deadline


def _verdict(mode, rc, out, err, res, why, nonce, seconds, isolated, cap, cpu, wall) -> SandboxResult:
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    r = SandboxResult("failed", rc, stdout, stderr, round(seconds, 4), isolated)
    cpu_killed = rc is not None and rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
    if why in ("timeout", "cpu") or cpu_killed:
        r.status = "timeout"
        r.detail = f"wall-clock limit ({wall:g} s)" if why == "timeout" else f"CPU time limit ({cpu} s)"
        if why == "timeout":
            r.detail += ": the program was waiting, not computing"
        return r
    if why == "output":
        r.detail = f"output limit exceeded (> {cap * _HARD_OUTPUT_FACTOR} bytes)"
        return r
    if stderr.startswith("bwrap:") or "sitf-sandbox: could not drop privileges" in stderr:
        r.status, r.detail = "error", "sandbox failed to start: " + stderr.strip()[-300:]
        return r
    if mode == "run":
        r.status = "passed" if rc == 0 else "failed"
        r.detail = "" if rc == 0 else f"exit status {rc}"
        return r
    lines = res.decode("utf-8", "replace").splitlines()
    last = lines[-1] if lines else ""
    parts = last.split(" ")
    if rc == 0 and len(parts) == 3 and parts[0] == "SITF-PASS" and parts[1] == nonce and parts[2].isdigit():
        r.status = "passed"
        return r
    if last.startswith("SITF-ERROR "):
        r.status, r.detail = "error", last[len("SITF-ERROR "):]
    elif last.startswith("SITF-FAIL "):
        r.detail = last[len("SITF-FAIL "):]
    else:
        r.detail = f"no verdict from the harness (exit status {rc}): the program ended before its tests did"
    return r


# ------------------------------------------------------------------------------------------ API
def run_program(code: str, *, cpu_seconds: int = CPU_SECONDS, timeout: Optional[float] = None, memory_mb: int = 512,
                max_file_mb: int = 8, max_procs: int = 32, output_bytes: int = 64 * 1024) -> SandboxResult:
    """Run a whole program; 'passed' means exit status 0 (the program controls that: see check_program).

    cpu_seconds: the time limit (CPU seconds, whole); timeout: the wall-clock backstop for a program that
    waits, None = wall_backstop(cpu_seconds).
    """
    timeout = wall_backstop(cpu_seconds) if timeout is None else timeout
    return _execute({"mode": "run", "code": code}, isolated=bwrap_available(), timeout=timeout,
                    limits=_limits(cpu_seconds, memory_mb, max_file_mb, max_procs), output_bytes=output_bytes)


def check_program(solution: str, tests: str, *, entry_point: Optional[str] = None, cpu_seconds: int = CPU_SECONDS,
                  timeout: Optional[float] = None, memory_mb: int = 512, max_file_mb: int = 8, max_procs: int = 32,
                  output_bytes: int = 64 * 1024) -> SandboxResult:
    """Run `solution`, then `tests` (assert statements); 'passed' only if the harness saw them all pass.

    With `entry_point`, ``check(<entry_point>)`` is appended to the tests (HumanEval's protocol).
    cpu_seconds: the time limit (CPU seconds for solution and tests together, whole seconds); timeout: the
    wall-clock backstop for a program that waits, None = wall_backstop(cpu_seconds).
    """
    timeout = wall_backstop(cpu_seconds) if timeout is None else timeout
    if entry_point is not None:
        if not entry_point.isidentifier():
            raise ValueError(f"entry_point must be an identifier, got {entry_point!r}")
        tests = f"{tests}\n\ncheck({entry_point})\n"
    return _execute({"mode": "check", "solution": solution, "tests": tests}, isolated=bwrap_available(),
                    timeout=timeout, limits=_limits(cpu_seconds, memory_mb, max_file_mb, max_procs),
                    output_bytes=output_bytes, nonce=secrets.token_hex(16))


def check_many(items: Sequence[tuple], workers: int = 4, **kw) -> list[SandboxResult]:
    """check_program over (solution, tests) or (solution, tests, entry_point) items, concurrently.

    Results come back in input order. Each program is its own process, so threads suffice.
    """
    bwrap_available()   # probe (and warn) once, before the threads start

    def one(item):
        solution, tests, *rest = item
        return check_program(solution, tests, entry_point=rest[0] if rest else None, **kw)

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
        return list(ex.map(one, items))


def passed_many(items: Sequence, workers: int = 4, **kw) -> list[bool]:
    """check_many over items where None means 'no program' (e.g. no code found): that one fails."""
    todo = [i for i, it in enumerate(items) if it is not None]
    out = [False] * len(items)
    for i, r in zip(todo, check_many([items[i] for i in todo], workers=workers, **kw)):
        out[i] = r.status == "passed"
    return out


__all__ = ["SandboxResult", "run_program", "check_program", "check_many", "passed_many", "bwrap_available",
           "sandbox_info"]
