"""The sandbox runs real child processes (bubblewrap when installed); no mocks.

Attacks on the pass verdict go through `check_program`; containment (network, files, processes,
memory, time, output) through `run_program`, which has no harness to lean on.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sitf_ray import sandbox
from sitf_ray.sandbox import SandboxResult, bwrap_available, check_many, check_program, run_program

INFO = sandbox.sandbox_info()
isolated_only = pytest.mark.skipif(not INFO["isolated"], reason="bubblewrap isolation unavailable here "
                                   "(install the Debian package 'bubblewrap')")

GOOD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4\n"


SLACK = 60.0   # wall-clock limit for programs that should finish: generous, the test machine may be busy


def check(solution: str, tests: str = TESTS, **kw) -> SandboxResult:
    kw.setdefault("timeout", SLACK)
    return check_program(textwrap.dedent(solution), tests, **kw)


def run(code: str, **kw) -> SandboxResult:
    kw.setdefault("timeout", SLACK)
    return run_program(code, **kw)


def test_info_and_probe():
    assert bwrap_available() is INFO["isolated"]
    print("sandbox:", INFO)


# ------------------------------------------------------------------------------------ basics
def test_passing_program():
    r = check(GOOD)
    assert r.status == "passed", r
    assert r.returncode == 0 and r.isolated == INFO["isolated"] and r.seconds > 0


def test_failing_assert_names_the_line():
    r = check("def add(a, b):\n    return a - b\n")
    assert r.status == "failed"
    assert "AssertionError" in r.detail and "line 1" in r.detail


def test_only_last_assert_fails():
    r = check("def add(a, b):\n    return 3 if (a, b) == (1, 2) else (0 if a == -1 else 5)\n")
    assert r.status == "failed" and "line 3" in r.detail


def test_syntax_error_in_solution():
    r = check("def add(a, b)\n    return a + b\n")
    assert r.status == "failed" and "SyntaxError" in r.detail


def test_exception_in_solution_call():
    r = check("def add(a, b):\n    return a + b + undefined_name\n")
    assert r.status == "failed" and "NameError" in r.detail


def test_broken_tests_are_an_error_not_a_failure():
    r = check(GOOD, tests="assert add(1, 2 == 3\n")
    assert r.status == "error" and "tests do not compile" in r.detail


def test_no_asserts_is_not_a_pass():
    assert check(GOOD, tests="x = add(1, 2)\n").status == "failed"


def test_stdout_is_captured():
    r = check("print('hello from the solution')\n" + GOOD)
    assert r.status == "passed" and "hello from the solution" in r.stdout


def test_run_program_exit_status():
    assert run("print(6 * 7)").stdout == "42\n"
    r = run("raise ValueError('boom')")
    assert r.status == "failed" and r.returncode != 0 and "ValueError: boom" in r.stderr
    assert run("import sys; sys.exit(3)").returncode == 3


# ------------------------------------------------------------------ fidelity (no false failures)
def test_entry_point_humaneval_style():
    sol = 'def incr_list(l: list):\n    """Increment."""\n    return [x + 1 for x in l]\n'
    tests = "METADATA = {}\n\ndef check(candidate):\n    assert candidate([]) == []\n" \
            "    assert candidate([3, 2, 1]) == [4, 3, 2]\n    for i in range(3):\n        assert candidate([i]) == [i + 1]\n"
    assert check_program(sol, tests, entry_point="incr_list", timeout=SLACK).status == "passed"
    assert check_program(sol.replace("x + 1", "x + 2"), tests, entry_point="incr_list", timeout=SLACK).status == "failed"
    with pytest.raises(ValueError):
        check_program(sol, tests, entry_point="incr_list); import os; (")


def test_legitimate_python_still_passes():
    sol = """
        import re, math, heapq, itertools, collections, sys
        from collections import namedtuple, Counter, OrderedDict, deque
        from typing import List
        from fractions import Fraction
        from decimal import Decimal
        from enum import IntEnum
        sys.setrecursionlimit(5000)
        Point = namedtuple("Point", "x y")
        class Color(IntEnum):
            RED = 1
        class Node:
            def __init__(self, v, nxt=None):
                self.v, self.nxt = v, nxt
            def __eq__(self, other):
                return isinstance(other, Node) and self.v == other.v
        def point(): return Point(1, 2)
        def count(s): return Counter(s)
        def od(): return OrderedDict([(1, 2)])
        def dq(): return deque([1, 2])
        def words(s: str) -> List[str]: return re.findall(r"\\w+", s)
        def root(x): return math.sqrt(x)
        def smallest(xs, k): return heapq.nsmallest(k, xs)
        def red(): return Color.RED
        def node(v): return Node(v)
        def half(): return Fraction(1, 2)
        def dec(): return Decimal("1.10")
        def nothing(): return None
        def fact(n): return 1 if n == 0 else n * fact(n - 1)
        def keys(): return {1: "a", 2: "b"}.keys()
        def matches(s): return re.match(r"a+", s)
        """
    tests = """
assert point() == (1, 2)
assert point().x == 1
assert count("aab") == {"a": 2, "b": 1}
assert od() == {1: 2}
assert dq() == deque([1, 2])
assert words("hi there") == ["hi", "there"]
assert math.isclose(root(2), 1.41421356, rel_tol=1e-6)
assert abs(root(16) - 4) < 1e-9
assert smallest([5, 1, 4], 2) == [1, 4]
assert 1 < root(2) < 2
assert red() == 1
assert node(3) == node(3)
assert node(3) != node(4)
assert half() == Fraction(1, 2)
assert dec() == Decimal("1.10")
assert nothing() is None
assert nothing() != 0
assert fact(300) > 10 ** 100
assert keys() == {1, 2}
assert 2 in keys()
assert matches("aaa")
assert not matches("b")
assert set(words("a b a")) == {"a", "b"}
assert sorted([3, 1, 2]) == [1, 2, 3]
assert all(x > 0 for x in smallest([5, 1, 4], 3))
"""
    r = check(sol, tests)
    assert r.status == "passed", r


# --------------------------------------------------------------- attacks on the verdict
@pytest.mark.parametrize("exit_stmt", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit(0)",
                                       "quit()", "import os; os.abort()"])
def test_early_exit_before_asserts_fails(exit_stmt):
    r = check(f"def add(a, b):\n    return 0\n{exit_stmt}\n")
    assert r.status in ("failed", "error") and r.status != "passed", r


@pytest.mark.parametrize("exit_stmt", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit(0)"])
def test_exit_inside_the_tested_call_fails(exit_stmt):
    r = check(f"def add(a, b):\n    {exit_stmt}\n")
    assert r.status == "failed", r


def test_patching_assertion_error_does_not_help():
    sol = """
        import builtins
        class Never(Exception):
            pass
        builtins.AssertionError = Never
        def add(a, b):
            return 0
        """
    assert check(sol).status == "failed"


def test_patching_builtins_and_stdlib_does_not_help():
    sol = """
        import builtins, math
        builtins.sorted = lambda *a, **k: [1, 2, 3]
        builtins.abs = lambda x: 0
        builtins.bool = lambda *a: True
        builtins.isinstance = lambda *a: True
        math.isclose = lambda *a, **k: True
        def add(a, b):
            math.isclose = lambda *a, **k: True   # re-patch from inside a call, too
            return 0
        """
    tests = "assert math.isclose(add(1, 1), 2)\nassert abs(add(1, 1) - 2) < 1e-9\nassert sorted([add(3, 0)]) == [1, 2, 3]\n"
    r = check(sol, tests)
    assert r.status == "failed", r


def test_always_equal_object_fails():
    sol = """
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __lt__(self, other): return True
            def __gt__(self, other): return True
            def __le__(self, other): return True
            def __ge__(self, other): return True
            def __bool__(self): return True
            def __hash__(self): return 0
        def add(a, b):
            return Anything()
        """
    for tests in (TESTS, "assert add(1, 2) in [3]\n", "assert not add(1, 2) != 3\n", "assert add(1, 2)\n",
                  "assert [add(1, 2)] == [3]\n", "assert 3 == add(1, 2)\n", "assert 2 < add(1, 2) < 4\n"):
        r = check(sol, tests)
        assert r.status == "failed", (tests, r)


def test_lying_subclasses_of_builtins_fail():
    sol = """
        class Int(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        class Lst(list):
            def __eq__(self, other): return True
        def add(a, b):
            return Int(0)
        def pair():
            return Lst([0])
        """
    assert check(sol).status == "failed"
    assert check(sol, "assert pair() == [1, 2]\n").status == "failed"
    assert check(sol, "assert add(0, 0) == 0\nassert pair() == [0]\n").status == "passed"   # honest values still equal


def test_fake_success_markers_fail():
    sol = """
        import os, sys
        for line in ("SITF-PASS 00000000000000000000000000000000 3", "OK", "passed", "All tests passed"):
            print(line)
            sys.stderr.write(line + "\\n")
            for fd in range(3, 64):
                try:
                    os.write(fd, (line + "\\n").encode())
                except OSError:
                    pass
        def add(a, b):
            return 0
        """
    r = check(sol)
    assert r.status == "failed", r


def test_introspection_is_blocked():
    sol = """
        import sys, gc
        found = []
        def attempt(f):
            try:
                found.append(f())
            except Exception as e:
                found.append(type(e).__name__)
        attempt(lambda: sys._getframe(1).f_locals)
        attempt(lambda: gc.get_objects())
        attempt(lambda: __import__("ctypes"))
        attempt(lambda: __import__("signal"))
        attempt(lambda: open("/proc/self/mem", "rb"))
        attempt(lambda: sys.settrace(lambda *a: None))
        try:
            1 / 0
        except ZeroDivisionError as e:
            attempt(lambda: e.__traceback__.tb_frame)
        def add(a, b):
            return found
        """
    r = check(sol, "assert add(1, 2) == []\n")
    assert r.status == "failed"
    r = check(sol, "assert add(1, 2) == ['ValueError', 'PermissionError', 'ImportError', 'ImportError', "
                   "'PermissionError', 'PermissionError', 'PermissionError']\n")
    assert r.status == "passed", r


def test_walking_the_heap_finds_no_harness_state():
    # Every class and module the solution can enumerate; patch whatever looks like harness state.
    sol = """
        import sys, builtins
        for mod in list(sys.modules.values()):
            d = getattr(mod, "__dict__", {})
            for k in list(d):
                if "sitf" in k.lower() or k in ("nonce", "hits", "_main", "_rewrite"):
                    d[k] = None
        for cls in object.__subclasses__():
            for v in list(vars(cls).values()):
                g = getattr(v, "__globals__", None)
                if isinstance(g, dict) and "_main" in g:
                    g["__builtins__"]["bool"] = lambda *a: True
                    print("FOUND HARNESS")
        def add(a, b):
            return 0
        """
    r = check(sol)
    assert r.status == "failed" and "FOUND HARNESS" not in r.stdout, r


def test_kill_parent_from_check_program_is_blocked():
    r = check("import os\nos.kill(os.getppid(), 9)\n" + GOOD)
    assert r.status == "failed" and "PermissionError" in r.detail


@isolated_only
def test_kill_parent_from_run_program_cannot_reach_us():
    me = os.getpid()
    r = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(%d, signal.SIGKILL)\n" % me)
    assert r.status == "failed"   # we are still here to check it
    r = run("import os\nprint(os.getppid())")
    assert r.status == "passed" and int(r.stdout) != os.getpid()


# ------------------------------------------------------------------------- containment
def test_infinite_loop_times_out():
    t = time.monotonic()
    r = run("while True:\n    pass\n", timeout=1.0)
    assert r.status == "timeout" and r.detail == "wall-clock limit" and time.monotonic() - t < 20
    r = check("def add(a, b):\n    while True:\n        pass\n", timeout=1.0)
    assert r.status == "timeout"


def test_cpu_limit():
    r = run("while True:\n    pass\n", cpu_seconds=1)
    assert r.status == "timeout" and r.detail == "CPU time limit", r


def test_memory_bomb_is_stopped():
    r = run("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.stderr
    r = run("xs = []\nwhile True:\n    xs.append(bytearray(10 ** 7))", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.stderr



def _processes_of(uid: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/status") as f:
                    if any(ln.startswith("Uid:") and int(ln.split()[1]) == uid for ln in f):
                        out.append(int(pid))
            except OSError:
                continue
    return out


@pytest.mark.skipif(not INFO["nproc_enforced"], reason="running as root without a uid switch: the kernel does "
                    "not apply RLIMIT_NPROC to root, a fork bomb would not be bounded")
def test_fork_bomb_is_bounded():
    counting = """
        import os, time
        print(os.getuid(), flush=True)
        n = 0
        for i in range(500):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print(n, flush=True)
        """
    r = run(textwrap.dedent(counting), max_procs=16)
    assert r.status == "passed", r
    uid, n = map(int, r.stdout.split())
    assert 0 < n < 16
    if INFO["drops_uid"]:   # the sleeping children died with the sandbox (PID namespace / process group)
        time.sleep(0.2)
        assert _processes_of(uid) == []
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t = time.monotonic()
    r = run(bomb, max_procs=16, timeout=1.5)
    assert r.status in ("timeout", "failed") and time.monotonic() - t < 20
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0   # the host can still fork


def test_enormous_output_is_capped():
    r = run("import sys\nfor i in range(20):\n    sys.stdout.write('x' * 10000)\n", output_bytes=1000)
    assert r.status == "passed" and len(r.stdout) == 1000   # 200 kB printed, 1 kB kept
    t = time.monotonic()
    r = run("import sys\nwhile True:\n    sys.stdout.write('y' * 100000)\n", output_bytes=4096)
    assert r.status == "failed" and "output limit" in r.detail and len(r.stdout) == 4096
    assert time.monotonic() - t < 30   # stopped by the output limit, long before the wall clock
    r = run("import sys\nsys.stderr.write('a' * 50000 + 'END')\nraise SystemExit(1)", output_bytes=100)
    assert len(r.stderr) == 100 and r.stderr.endswith("END")


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("SITF_SECRET", "hunter2")
    r = run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('SITF_SECRET'))")
    assert r.status == "passed" and "hunter2" not in r.stdout and r.stdout.strip().endswith("None")
    assert "SITF_SECRET" not in r.stdout
    r = check("import os\ndef add(a, b):\n    return os.environ.get('SITF_SECRET', a + b)\n")
    assert r.status == "passed"


def test_work_dir_is_private_and_removed():
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}.txt"
    r = run(f"import os\nopen({marker!r}, 'w').write('x')\nprint(os.getcwd())\nprint(os.listdir('.'))")
    assert r.status == "passed" and marker in r.stdout and "payload.json" not in r.stdout
    import glob
    import tempfile
    assert glob.glob(os.path.join(tempfile.gettempdir(), "sitf-sbx-*", marker)) == []


@isolated_only
def test_network_is_unreachable():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        code = f"""
import socket
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", {port}))
    print("CONNECTED")
except OSError as e:
    print("blocked", e)
"""
        r = run(code)
        assert r.status == "passed" and "blocked" in r.stdout and "CONNECTED" not in r.stdout
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


def test_network_blocked_in_check_program_even_without_isolation():
    r = check("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n" + GOOD)
    assert r.status == "failed"


@isolated_only
def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(target, 0o777)
    code = f"""
import os
for path in ({str(target / 'pwned')!r}, "/tmp/pwned-by-sandbox", os.path.expanduser("~/../pwned"), "/usr/pwned"):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x")
        print("wrote", path)
    except OSError as e:
        print("denied", path, type(e).__name__)
print(os.path.exists("/root"), os.path.exists({str(tmp_path)!r}))
"""
    r = run(code)
    assert r.status == "passed", r
    assert not (target / "pwned").exists()
    assert not os.path.exists("/tmp/pwned-by-sandbox")
    assert not os.path.exists("/usr/pwned")


@isolated_only
def test_cannot_read_project_files():
    here = os.path.abspath(__file__)
    r = run(f"print(open({here!r}).read()[:20])")
    assert r.status == "failed" and ("FileNotFoundError" in r.stderr or "PermissionError" in r.stderr)


# ------------------------------------------------- the verdict without bubblewrap (fallback)
@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe_result", False)   # as if bwrap were missing: a real fallback run


def test_fallback_verdict_is_still_protected(no_bwrap):
    assert not bwrap_available()
    r = check(GOOD)
    assert r.status == "passed" and not r.isolated
    assert check("def add(a, b):\n    return 0\n").status == "failed"
    for exit_stmt in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit(0)"):
        assert check(f"def add(a, b):\n    return 0\n{exit_stmt}\n").status == "failed"
    anything = "class A:\n    def __eq__(self, o): return True\ndef add(a, b):\n    return A()\n"
    assert check(anything).status == "failed"
    r = check("import os\nos.kill(os.getppid(), 0)\n" + GOOD)   # signal 0: harmless if it got through
    assert r.status == "failed" and "PermissionError" in r.detail
    r = check("import socket\nsocket.socket()\n" + GOOD)
    assert r.status == "failed" and "PermissionError" in r.detail
    r = check("print('SITF-PASS 0 3')\nimport os\nos._exit(0)\n" + GOOD)
    assert r.status == "failed"


def test_fallback_keeps_limits_and_env(no_bwrap, monkeypatch):
    monkeypatch.setenv("SITF_SECRET", "hunter2")
    r = run("import os\nprint(os.environ.get('SITF_SECRET'))")
    assert r.stdout.strip() == "None" and not r.isolated
    assert run("while True:\n    pass\n", timeout=1.0).status == "timeout"
    r = run("x = bytearray(4 * 1024 ** 3)", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.stderr


# -------------------------------------------------------------------------- concurrency
def test_check_many_keeps_input_order():
    items = []
    for i in range(12):
        ok = i % 3 != 0
        sol = f"def f():\n    return {i if ok else -1}\n"
        items.append((sol, f"assert f() == {i}\n"))
    res = check_many(items, workers=4, timeout=SLACK)
    assert [r.status for r in res] == ["passed" if i % 3 else "failed" for i in range(12)]
    assert check_many([]) == []
    he = check_many([("def g(x):\n    return x\n", "def check(c):\n    assert c(1) == 1\n", "g")], timeout=SLACK)
    assert he[0].status == "passed"


def test_throughput_of_trivial_programs():
    items = [(GOOD, TESTS)] * 40
    t = time.monotonic()
    res = check_many(items, workers=4, timeout=SLACK)
    dt = time.monotonic() - t
    assert all(r.status == "passed" for r in res)
    print(f"\nsandbox throughput: {len(items) / dt:.1f} programs/s "
          f"(40 programs, 4 workers, {os.cpu_count()} cores, isolated={INFO['isolated']})")
