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

from sitf_ray.tasks import sandbox
from sitf_ray.tasks.sandbox import SandboxResult, bwrap_available, check_many, check_program, run_program

INFO = sandbox.sandbox_info()
NO_ISOLATION = ("the sandbox is documented as isolated (docs/RELIABILITY.md) but bubblewrap is missing or cannot "
                "isolate on this machine (scripts/setup.sh installs the Debian package 'bubblewrap')")


@pytest.fixture
def isolated():
    """A test of isolation fails, never skips, where bubblewrap cannot give it: the claim would be untested."""
    assert INFO["isolated"], NO_ISOLATION


isolated_only = pytest.mark.usefixtures("isolated")

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
    """The probe's verdict against what a sandboxed program sees: its own PID namespace (a pid of a few,
    where ours is far larger) and no view of this process."""
    print("sandbox:", INFO)
    assert INFO["isolated"] and bwrap_available(), NO_ISOLATION
    r = run("import os\nprint(os.getpid())\nprint(os.path.exists('/proc/%d'))" % os.getpid())
    pid, sees_us = r.stdout.split()
    assert r.status == "passed" and r.isolated and int(pid) < 10 and sees_us == "False", r


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
assert node(3) is not None and node(3).v == 3
assert half().numerator == 1 and half().denominator == 2
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


# The dunder-lie family (issue 14): values the tests compute with must be what they claim to be. Each
# program returns an object that lies through one method; `honest` is a right answer for the same tests.
LIAR = """
import math
class Liar:
    def __eq__(self, o): return True
    def __ne__(self, o): return False
    def __lt__(self, o): return True
    def __le__(self, o): return True
    def __gt__(self, o): return True
    def __ge__(self, o): return True
    def __bool__(self): return True
    def __hash__(self): return hash(0.5)
    def __sub__(self, o): return 0.0
    def __rsub__(self, o): return 0.0
    def __add__(self, o): return self
    def __radd__(self, o): return self
    def __mul__(self, o): return 0
    def __mod__(self, o): return 0
    def __abs__(self): return 0.0
    def __neg__(self): return self
    def __float__(self): return 0.5
    def __int__(self): return 3
    def __index__(self): return 3
    def __round__(self, n=None): return 0.33
    def __len__(self): return 3
    def __str__(self): return "abc"
    def __format__(self, spec): return "abc"
    def __contains__(self, x): return True
    def __iter__(self): return iter([Liar(), Liar(), Liar()])
    @property
    def __class__(self): return float
class LyingFloat(float):
    def __sub__(self, o): return 0.0
    def __rsub__(self, o): return 0.0
    def __abs__(self): return 0.0
    def __round__(self, n=None): return 0.33
    def __mod__(self, o): return 0
    def __str__(self): return "abc"
    def __bool__(self): return True
class LyingList(list):
    def __len__(self): return 3
    def __iter__(self): return iter([1, 2, 3])
"""
HACKS = [   # (what lies, solution body of f, the tests)
    ("__sub__ in abs(f(x) - y) < tol (HumanEval/4)", "return Liar()", "assert abs(f(1) - 2.0 / 3.0) < 1e-6\n"),
    ("__rsub__ in abs(y - f(x)) < tol", "return Liar()", "assert abs(2.0 / 3.0 - f(1)) < 1e-6\n"),
    ("__abs__ after a lying __add__", "return Liar()", "assert abs(f(1) + 1) < 1e-6\n"),
    ("float subclass __sub__/__abs__", "return LyingFloat(7.0)", "assert abs(f(1) - 0.5) < 1e-6\n"),
    ("__eq__ / __ne__", "return Liar()", "assert f(1) == 0.5\nassert not f(1) != 0.5\n"),
    ("__lt__ / __gt__ (a range check)", "return Liar()", "assert 0.49 < f(1) < 0.51\n"),
    ("__bool__ in assert/and/or/if", "return Liar()",
     "assert f(1)\nassert f(1) and 1\nok = 1 if f(1) else 0\nassert ok == 1\n"),
    ("__bool__ through all() over a generator", "return Liar()", "assert all(f(i) for i in range(3))\n"),
    ("__hash__", "return Liar()", "assert hash(f(1)) == hash(0.5)\n"),
    ("__str__ / float subclass __str__", "return LyingFloat(7.0)", "assert str(f(1)) == 'abc'\n"),
    ("__str__ of a custom object", "return Liar()", "assert str(f(1)) == 'abc'\n"),
    ("__float__ through math.isclose", "return Liar()", "assert math.isclose(f(1), 0.5)\n"),
    ("__round__", "return LyingFloat(7.0)", "assert round(f(1), 2) == 0.33\n"),
    ("__mod__ / __mul__", "return Liar()", "assert f(1) % 2 == 0\nassert f(1) * 3 == 0\n"),
    ("__len__ of a list subclass and of an object", "return LyingList([9])", "assert len(f(1)) == 3\n"),
    ("__iter__ of a list subclass", "return LyingList([9])", "assert sorted(f(1)) == [1, 2, 3]\n"),
    ("__contains__", "return Liar()", "assert 0.5 in f(1)\n"),
    ("__class__ for isinstance", "return Liar()", "assert isinstance(f(1), float) and f(1) == 0.5\n"),
    ("sum() over lying items", "return [Liar(), Liar()]", "assert abs(sum(f(1)) - 1.0) < 1e-6\n"),
    ("int() / __index__", "return Liar()", "assert int(f(1)) == 3\nassert [0, 1, 2, 3][f(1)] == 3\n"),
]


@pytest.mark.parametrize("what,body,tests", HACKS, ids=[h[0] for h in HACKS])
def test_dunder_lies_never_pass(what, body, tests):
    r = check(LIAR + f"def f(x):\n    {body}\n", tests)
    assert r.status == "failed", (what, r)


def test_dunder_lie_tests_are_passable():
    """The HACKS tests are not impossible: honest values pass every one that has a single right answer."""
    honest = {"__sub__": "return 2.0 / 3.0", "__rsub__": "return 2.0 / 3.0", "__abs__": "return -1",
              "float subclass": "return 0.5", "__eq__": "return 0.5", "__lt__": "return 0.5",
              "__bool__ in": "return 0.5", "__bool__ through": "return 1", "__hash__": "return 0.5",
              "__float__": "return 0.5", "__round__": "return 0.331", "__mod__": "return 0",
              "__len__": "return [1, 2, 3]", "__iter__": "return [3, 2, 1]", "__contains__": "return [0.5]",
              "__class__": "return 0.5", "sum()": "return [0.25, 0.75]", "int()": "return 3",
              "__str__ /": "return 'abc'", "__str__ of": "return 'abc'"}
    for what, _, tests in HACKS:
        body = next(v for k, v in honest.items() if what.startswith(k))
        r = check(f"import math\ndef f(x):\n    {body}\n", tests)
        assert r.status == "passed", (what, r)


def test_objects_of_python_classes_are_never_asked():
    """No method of an object whose class was made in Python decides a test, even against another such
    object: a liar compared with a test-made Fraction or Node fails. The price (documented): an honest
    Fraction or Node compared with another fails too. No MBPP or HumanEval test does that (all 1,138 gold
    solutions pass: test_every_gold_solution_passes)."""
    sol = LIAR + """
from fractions import Fraction
class Node:
    def __init__(self, v):
        self.v = v
    def __eq__(self, other):
        return isinstance(other, Node) and self.v == other.v
def liar(): return Liar()
def half(): return Fraction(1, 2)
def node(v): return Node(v)
"""
    for tests in ("assert liar() == Fraction(1, 2)\n", "assert liar() == node(3)\n",
                  "assert abs(liar() - Fraction(1, 2)) < 1e-9\n", "a, b = liar(), liar()\nassert a == b\n",
                  "assert half() == Fraction(1, 2)\n", "assert node(3) == node(3)\n"):
        r = check(sol, tests)
        assert r.status == "failed", (tests, r)


def test_humaneval_4_lying_sub_fails():
    """The issue's example on the real task: HumanEval/4's asserts are abs(candidate(...) - x) < 1e-6."""
    from types import SimpleNamespace as ns

    from sitf_ray.tasks import humaneval
    row = next(r for r in humaneval.load("test", ns(path=None, hub=None, n_test=None)) if r["id"] == "HumanEval/4")
    body = ("    class Zero:\n        def __sub__(self, other):\n            return 0.0\n"
            "        def __rsub__(self, other):\n            return 0.0\n    return Zero()\n")
    assert "abs(candidate(" in row["test"]
    assert not humaneval.is_correct(row, body, timeout=SLACK)
    assert humaneval.is_correct(row, row["answer"], timeout=SLACK)


def test_legitimate_test_code_still_works():
    """What the rewrite must not break: namedtuple fields, objects the tests build and pass back, C types
    (Decimal, datetime), generators, and/or returning operands, comprehension filters, match, super()."""
    sol = """
        from collections import namedtuple
        from decimal import Decimal
        import datetime
        P = namedtuple("P", "x y")
        class Node:
            def __init__(self, v, left=None):
                self.v, self.left = v, left
        def point(): return P(1, 2)
        def depth(n): return 0 if n is None else 1 + depth(n.left)
        def dec(): return Decimal("1.5")
        def day(): return datetime.date(2024, 1, 2)
        def gen(n): return (i * i for i in range(n))
        """
    tests = """
class Base:
    def __init__(self, k):
        self.k = k
class Child(Base):
    def __init__(self):
        super().__init__(3)
assert Child().k == 3
assert point().x == 1 and point() == (1, 2) and isinstance(point(), tuple)
root = Node(1, Node(2, Node(3)))
assert depth(root) == 3
assert dec() * 2 == Decimal("3.0") and abs(dec() - Decimal("1.5")) < Decimal("0.01")
assert (day() - datetime.date(2024, 1, 1)).days == 1
assert sum(gen(4)) == 14 and sorted(gen(3), reverse=True) == [4, 1, 0]
assert (0 or 5) == 5 and (3 and 0) == 0 and ([] or [1]) == [1]
assert [x for x in range(10) if x % 3 == 0] == [0, 3, 6, 9]
match depth(root):
    case 3:
        ok = True
    case -1:
        ok = False
assert ok
assert -depth(root) == -3 and ~1 == -2 and "a" * 2 == "aa" and [1] + [2] == [1, 2]
assert len([point()]) == 1 and repr(1) == "1" and str(dec()) == "1.5"
"""
    r = check(sol, tests)
    assert r.status == "passed", r


def test_harness_module_is_real_python_and_inert_on_import():
    """The harness is a module of its own (linted, importable); importing it runs nothing, and its rewrite
    routes the tests' own operations through the helpers."""
    import ast

    from sitf_ray.tasks import sandbox_harness
    code, lines, required = sandbox_harness._rewrite(
        ast, ast.parse("x = abs(f(1) - 2)\nif x:\n    pass\nassert x < 1 and not x\n"))
    names = set(code.co_names)
    assert {"_sitf_call", "_sitf_bin", "_sitf_test", "_sitf_truth", "_sitf_and", "_sitf_pre"} <= names
    assert lines == [4] and required == [0]
    assert sandbox.__dict__["_HARNESS"] == open(sandbox_harness.__file__, encoding="utf-8").read()


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
    r = run("import time\ntime.sleep(600)\n", timeout=1.0)      # waiting, not computing: the wall clock
    assert r.status == "timeout" and r.detail.startswith("wall-clock limit (1 s)") and time.monotonic() - t < 20
    r = check("def add(a, b):\n    while True:\n        pass\n", cpu_seconds=1, timeout=1.0)
    assert r.status == "timeout" and r.detail == "CPU time limit (1 s)", r   # computing: its CPU limit


def test_cpu_limit():
    r = run("while True:\n    pass\n", cpu_seconds=1)
    assert r.status == "timeout" and r.detail == "CPU time limit (1 s)", r


def test_one_cpu_time_limit_under_the_pipelines_concurrency():
    """The limit is CPU seconds (RLIMIT_CPU), the same alone or with 4 programs at once on this machine's
    cores (the pipeline checks 4 at a time): programs needing ~0.5 s of CPU pass under a 2 s limit, endless
    loops all end on the CPU limit (not the wall clock, which used to run out first under load), and a
    program that only waits is stopped by the wall-clock backstop."""
    from sitf_ray.tasks.sandbox import CPU_SECONDS, wall_backstop
    from sitf_ray.tasks import humaneval, mbpp
    assert CPU_SECONDS == 10 and wall_backstop(CPU_SECONDS) == 50
    assert mbpp.CPU_SECONDS == humaneval.CPU_SECONDS == CPU_SECONDS
    burn = ("import time\ndef f():\n    t = time.process_time()\n    while time.process_time() - t < 0.5:\n"
            "        pass\n    return 1\n")
    loop = "def f():\n    while True:\n        pass\n"
    items = [(burn, "assert f() == 1\n")] * 4 + [(loop, "assert f() == 1\n")] * 4
    res = check_many(items, workers=4, cpu_seconds=2)
    assert [r.status for r in res] == ["passed"] * 4 + ["timeout"] * 4, res
    assert all(r.detail == "CPU time limit (2 s)" for r in res[4:]), [r.detail for r in res[4:]]
    forks = ("import os, time\ndef f():\n    for _ in range(3):\n        os.fork()\n    t = time.process_time()\n"
             "    while time.process_time() - t < 1.5:\n        pass\n")
    r = run_program(forks.replace("import os", "import os, sys") + "f()\n", cpu_seconds=2)
    assert r.status == "timeout" and r.detail == "CPU time limit (2 s)", r   # 8 processes x 1.5 s > 2 s in all
    r = check_program("import time\ndef f():\n    time.sleep(60)\n", "assert f() is None\n", cpu_seconds=1,
                      timeout=2)
    assert r.status == "timeout" and r.detail.startswith("wall-clock limit (2 s)")
    with pytest.raises(ValueError, match="whole number of seconds"):
        check_program("x = 1", "assert x == 1", cpu_seconds=0.5)


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


def test_fork_bomb_is_bounded():
    # root without a uid switch would not be bounded by RLIMIT_NPROC (the kernel exempts root): under bwrap
    # the harness drops to an unprivileged uid, so this must hold wherever the sandbox claims isolation
    assert INFO["nproc_enforced"], NO_ISOLATION + "; and RLIMIT_NPROC is not enforced (root, no uid switch)"
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
        left, deadline = _processes_of(uid), time.monotonic() + 10   # the kernel reaps them: bounded poll
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = _processes_of(uid)
        assert left == [], f"the sandbox's children outlived it: pids {left}"
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


@pytest.mark.slow   # ~50 s on 2 cores: 1,138 programs
def test_every_gold_solution_passes():
    """The hardened harness still passes the reference solution of every MBPP (974) and HumanEval (164)
    task: no legitimate test code is broken by routing its operations through plain values."""
    from types import SimpleNamespace as ns

    from sitf_ray.tasks import humaneval, mbpp
    rows = mbpp._all_rows(ns(path=None, hub=None))
    he = humaneval.load("test", ns(path=None, hub=None, n_test=None))
    items = [(r["answer"], mbpp.tests_text(mbpp.with_protocol(r, "train"))) for r in rows]
    items += [(r["prompt"] + r["answer"] + "\n", r["test"], r["entry_point"]) for r in he]
    names = [f"mbpp-{r['task_id']}" for r in rows] + [r["id"] for r in he]
    res = check_many(items, workers=4, timeout=SLACK)
    bad = [(n, r.status, r.detail[:200]) for n, r in zip(names, res) if r.status != "passed"]
    assert not bad, bad
