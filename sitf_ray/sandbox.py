"""Run untrusted, model-written Python (MBPP / HumanEval completions) and decide pass/fail.

Two entry points:

* ``run_program(code)`` runs a program in a child process with OS-level containment only and reports
  its exit status (``passed`` means exit code 0; a program can trivially claim that).
* ``check_program(solution, tests)`` runs the solution followed by the tests inside a trusted harness
  and reports ``passed`` only when the harness itself saw every test run and succeed. Use this for
  rewards and accuracy: a program that exits early, kills its parent or prints a success marker fails.

Containment (both entry points)
-------------------------------
* One child process per program, started in a new session; the wall-clock timeout kills its whole
  process group. A throw-away temporary directory is the working directory and HOME; it is deleted
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
3. The tests are compiled before the solution runs, and every ``assert`` in them is rewritten so its
   value goes through the harness: comparisons (``==``, ``!=``, ``<``, ``in``, ...) and truth tests
   are evaluated on *canonical copies* of the operands made only of builtin types (int, float, str,
   list, dict, set, tuple, ... ; subclasses such as namedtuple or IntEnum are converted with the
   builtin base type's own C methods). An object that overrides ``__eq__``/``__bool__``/``__lt__`` to
   always succeed never gets asked: compared with plain data it is unequal (ordering and membership
   raise). Two such objects compared with each other use their own methods (custom classes built by
   MBPP's test_setup_code need that). The assert statement itself raises the interpreter's own
   AssertionError (bytecode LOAD_ASSERTION_ERROR), so replacing ``builtins.AssertionError`` changes
   nothing.
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
being evaluated (restoration happens between asserts, and only for the listed modules); an
untrusted object leaking into arithmetic the test does itself (``abs(f(x) - y) < 1e-6`` with an
``f(x)`` whose ``__sub__`` lies); two solution-made objects compared with each other. A legitimate
but unusual solution can be failed by the hardening: comparing a pure-Python numeric type such as
``fractions.Fraction`` with a plain number, asserting the truth value of a pure-Python object, or
using frames/tracebacks/signals itself (``sys._getframe`` raises ValueError, which namedtuple,
typing and logging tolerate). The gold solutions of all MBPP and HumanEval tasks pass.
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
from typing import Optional, Sequence

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")
_SANDBOX_DIR = "/sandbox"          # the work directory as seen inside bwrap
_RESULT_CAP = 4096                 # bytes kept from the harness's result pipe
_HARD_OUTPUT_FACTOR = 256          # kill a program that prints more than this x output_bytes
_UID_RANGE = (1_500_000_000, 1_600_000_000)   # fresh uids for root runs (no real user has these)


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
# Runs inside the child. Everything the check-mode helpers need (builtins included) is bound to
# locals of _main before any untrusted code runs, so the helpers reach nothing through a globals or
# builtins dict that a solution could modify. The harness defines no classes (a class would be
# reachable through object.__subclasses__()).
_HARNESS = r'''
import sys, os


def _main():
    import resource, json, types, operator, ast, collections, builtins as real_builtins
    write, read, close, getcwd, os_exit = os.write, os.read, os.close, os.getcwd, os._exit
    flushes = (sys.stdout.flush, sys.stderr.flush)   # the real streams, whatever the solution rebinds
    type_, bool_, len_, range_, iter_, str_, sum_, object_ = type, bool, len, range, iter, str, sum, object
    int_, float_, complex_ = int, float, complex
    list_, tuple_, set_, fset_, dict_, slice_, bytes_ = list, tuple, set, frozenset, dict, slice, bytes
    BaseException_, TypeError_, ValueError_ = BaseException, TypeError, ValueError
    PermissionError_, ImportError_ = PermissionError, ImportError
    type_flags = type.__dict__["__flags__"].__get__
    type_name = type.__dict__["__name__"].__get__
    type_mro = type.__dict__["__mro__"].__get__
    type_module = type.__dict__["__module__"].__get__
    obj_setattr = object.__setattr__
    exc_str = BaseException.__str__
    int_add, float_float, complex_add = int.__add__, float.__float__, complex.__add__
    str_str, bytes_getitem = str.__str__, bytes.__getitem__
    list_iter, tuple_iter, set_iter, fset_iter, dict_items_of = (
        list.__iter__, tuple.__iter__, set.__iter__, frozenset.__iter__, dict.items)

    def _exit(code):
        for flush in flushes:   # the program's prints are part of the result; os._exit skips flushing
            try:
                flush()
            except BaseException_:
                pass
        os_exit(code)

    # ---- privileges first (the kernel ignores RLIMIT_NPROC for uid 0, hence a fresh uid), then limits
    uid = None if sys.argv[2] == "-" else int(sys.argv[2])
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        with open("/proc/self/status") as f:
            capeff = [ln for ln in f if ln.startswith("CapEff:")]
        if os.getresuid() != (uid, uid, uid) or not capeff or int(capeff[0].split()[1], 16) != 0:
            write(2, b"sitf-sandbox: could not drop privileges\n")
            _exit(125)
    else:
        try:  # non-dumpable: same-uid processes cannot read our memory via /proc/<pid>/mem
            import ctypes
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE = 4
        except Exception:
            pass
        for m in ("ctypes", "_ctypes", "ctypes._endian"):
            sys.modules.pop(m, None)
    os.chdir(os.path.dirname(sys.argv[1]))   # after the switch: the work dir belongs to the new uid
    with open(sys.argv[1], "rb") as f:
        P = json.loads(f.read().decode("utf-8"))
    os.unlink(sys.argv[1])
    sys.modules["__main__"].__dict__.pop("builtins", None)
    L = P["limits"]

    def setl(res, soft, hard=None):
        hard = soft if hard is None else hard
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))

    setl(resource.RLIMIT_CPU, L["cpu"], L["cpu"] + 1)
    setl(resource.RLIMIT_AS, L["mem"])
    setl(resource.RLIMIT_FSIZE, L["fsize"])
    setl(resource.RLIMIT_NPROC, L["nproc"])
    setl(resource.RLIMIT_CORE, 0)
    setl(resource.RLIMIT_NOFILE, L["nofile"])

    if P["mode"] == "run":   # plain program: containment only, its exit status is the result
        ns = sys.modules["__main__"].__dict__
        code = compile(P["code"], "<program>", "exec")
        del P
        exec(code, ns)
        return

    # ---- check mode
    nonce = read(P["nonce_fd"], 256).decode("ascii").strip()
    close(P["nonce_fd"])
    result_fd = P["result_fd"]

    def report(kind, text, code):
        try:
            text = str_(text).replace("\r", " ").replace("\n", " | ")[:600]
            write(result_fd, ("SITF-%s %s\n" % (kind, text)).encode("utf-8", "replace"))
        finally:
            _exit(code)

    def exc_text(e):
        try:
            name = type_name(type_(e))
            msg = exc_str(e)
        except BaseException_:
            return "exception"
        return name + (": " + msg if msg else "")

    # Tests are parsed, rewritten and compiled before the solution can touch ast/compile.
    try:
        test_code, site_lines, required = _rewrite(ast, ast.parse(P["tests"], "<tests>"))
    except BaseException as e:
        report("ERROR", "tests do not compile: " + exc_text(e), 3)
    try:
        sol_code = compile(P["solution"], "<solution>", "exec")
    except BaseException as e:
        report("FAIL", "solution does not compile: " + exc_text(e), 1)

    # ---- canonical plain values: comparisons and truth tests never call solution-defined methods
    OPAQUE = object()
    IMMUTABLE = 1 << 8   # Py_TPFLAGS_IMMUTABLETYPE: C types; classes made in Python never have it
    dict_keys, dict_values, dict_items = type({}.keys()), type({}.values()), type({}.items())
    ATOMS = {int, float, complex, bool, str, bytes, bytearray, type(None), range, dict_values,
             type(Ellipsis), type(NotImplemented)}
    OrderedDict, defaultdict, deque = collections.OrderedDict, collections.defaultdict, collections.deque
    SETLIKE = (set, frozenset, dict_keys, dict_items, deque)

    def c_type(t):
        return bool_(type_flags(t) & IMMUTABLE)

    def canon(v, depth=0):
        if depth > 60:
            return OPAQUE
        t = type_(v)
        if t in ATOMS:
            return v
        d = depth + 1
        if t is list_ or t is tuple_:
            out = []
            for x in (list_iter(v) if t is list_ else tuple_iter(v)):
                c = canon(x, d)
                if c is OPAQUE:
                    return OPAQUE
                out.append(c)
            return out if t is list_ else tuple_(out)
        if t is dict_ or t is defaultdict or t is OrderedDict:
            items = []
            for k, x in dict_items_of(v):
                ck, cx = canon(k, d), canon(x, d)
                if ck is OPAQUE or cx is OPAQUE:
                    return OPAQUE
                items.append((ck, cx))
            return OrderedDict(items) if t is OrderedDict else dict_(items)
        if t in SETLIKE:
            out = []
            for x in (set_iter(v) if t is set_ else fset_iter(v) if t is fset_ else iter_(v)):
                c = canon(x, d)
                if c is OPAQUE:
                    return OPAQUE
                out.append(c)
            if t is deque:
                return deque(out)
            try:
                return set_(out) if t is set_ else fset_(out)
            except TypeError_:
                return OPAQUE
        if c_type(t) and type_module(t) == "decimal" and type_name(t) == "Decimal":
            return v       # the C decimal type: its comparisons are C code
        # Subclasses of plain types (namedtuple, IntEnum, Counter, ...): convert with the base's C code.
        for base in type_mro(t):
            try:
                if base is int_:
                    return int_add(v, 0)
                if base is float_:
                    return float_float(v)
                if base is complex_:
                    return complex_add(v, 0j)
                if base is str_:
                    return str_str(v)
                if base is bytes_:
                    return bytes_getitem(v, slice_(None))
                if base is list_:
                    return canon(list_(list_iter(v)), d)
                if base is tuple_:
                    return canon(tuple_(tuple_iter(v)), d)
                if base is dict_:
                    return canon(dict_(dict_items_of(v)), d)
                if base is set_:
                    return canon(set_(set_iter(v)), d)
                if base is fset_:
                    return canon(fset_(fset_iter(v)), d)
            except BaseException_:
                return OPAQUE
        return OPAQUE

    def truth_value(v):
        if type_(v) is bool_:
            return v
        c = canon(v)
        if c is not OPAQUE:
            return bool_(c)
        if c_type(type_(v)):       # C-implemented type (re.Match, datetime, ...): its bool is C code
            return bool_(v)
        raise TypeError_("sitf sandbox: the truth value of a %s object is not trusted" % type_name(type_(v)))

    OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
           ">": operator.gt, ">=": operator.ge}
    contains = operator.contains

    def cmp1(op, a, b):
        if op == "is":
            return a is b
        if op == "is not":
            return a is not b
        ca, cb = canon(a), canon(b)
        if ca is not OPAQUE and cb is not OPAQUE:
            if op == "in":
                return truth_value(contains(cb, ca))
            if op == "not in":
                return not truth_value(contains(cb, ca))
            return truth_value(OPS[op](ca, cb))
        if ca is OPAQUE and cb is OPAQUE:     # two custom objects (e.g. test_setup_code classes)
            if op == "in":
                return truth_value(contains(b, a))
            if op == "not in":
                return not truth_value(contains(b, a))
            return truth_value(OPS[op](a, b))
        # one untrusted object against plain data: never ask the untrusted object
        if op == "==" or op == "in":
            return False
        if op == "!=" or op == "not in":
            return True
        raise TypeError_("sitf sandbox: %s between a %s and a %s object is not trusted"
                         % (op, type_name(type_(a)), type_name(type_(b))))

    def h_cmp(ops, *vals):
        for i in range_(len_(ops)):
            if not cmp1(ops[i], vals[i], vals[i + 1]):
                return False
        return True

    hits = [0] * len_(site_lines)
    current = [None]

    def h_truth(site, v):
        hits[site] += 1
        return truth_value(v)

    def h_not(v):
        return not truth_value(v)

    # ---- module state restored before every assert
    SNAP = ("builtins", "math", "cmath", "re", "collections", "itertools", "functools", "heapq",
            "bisect", "string", "operator", "copy", "random", "types")
    for name in SNAP:
        __import__(name)
    sys_modules, ModuleType, MISSING = sys.modules, types.ModuleType, object()
    snaps = [(n, sys_modules[n], sys_modules[n].__dict__, dict(sys_modules[n].__dict__)) for n in SNAP]
    private_builtins = dict(real_builtins.__dict__)
    held = []    # replaced values stay referenced, so no __del__ can run in the middle of a restore

    def restore():
        for name, mod, md, saved in snaps:
            if sys_modules.get(name) is not mod:
                held.append(sys_modules.get(name))
                sys_modules[name] = mod
            if type_(mod) is not ModuleType:
                obj_setattr(mod, "__class__", ModuleType)
            for k, v in saved.items():
                if md.get(k, MISSING) is not v:
                    held.append(md.copy())
                    md.update(saved)
                    break

    def h_pre(site):
        current[0] = site
        restore()

    # ---- audit hook: no frames, no gc walking, no ctypes, no /proc, no processes, no sockets
    BLOCK = frozenset([
        "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
        "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.popen",
        "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink",
        "os.link", "cpython.run_command", "cpython.run_file", "cpython.run_module"])
    BLOCK_PREFIX = ("ctypes.", "socket.", "_posixsubprocess.", "mmap.")
    BLOCK_IMPORT = frozenset([
        "ctypes", "_ctypes", "signal", "_signal", "faulthandler", "_testcapi", "_testinternalcapi",
        "_testbuffer", "_testmultiphase", "_xxsubinterpreters", "_xxinterpchannels", "_posixsubprocess",
        "_tracemalloc", "tracemalloc"])
    FRAME_ATTRS = frozenset(["tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"])
    BAD_PATHS = ("/proc", "/sys", "/dev/fd")
    fspath = os.fspath

    def norm(path):
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        out = []
        for part in path.split("/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
            else:
                out.append(part)
        return "/" + "/".join(out)

    def hook(event, args):
        if event in BLOCK or event.startswith(BLOCK_PREFIX):
            raise PermissionError_("sitf sandbox: %s is not allowed" % event)
        if event == "sys._getframe":
            raise ValueError_("sitf sandbox: frames are not available")   # namedtuple/logging tolerate this
        if event == "object.__getattr__" and len_(args) > 1 and args[1] in FRAME_ATTRS:
            raise PermissionError_("sitf sandbox: frame access is not allowed")
        if event == "import" and args and str_(args[0]).partition(".")[0] in BLOCK_IMPORT:
            raise ImportError_("sitf sandbox: import of %s is not allowed" % args[0])
        if event == "open" and args:
            p = args[0]
            if type_(p) is not int_ and p is not None:
                p = fspath(p)
                if type_(p) is bytes_:
                    p = p.decode("utf-8", "surrogateescape")
                p = norm(p)
                for bad in BAD_PATHS:
                    if p == bad or p.startswith(bad + "/"):
                        raise PermissionError_("sitf sandbox: opening %s is not allowed" % bad)

    for m in ("signal", "_signal", "ctypes", "_ctypes"):
        sys_modules.pop(m, None)
    sys.addaudithook(hook)

    # ---- run the solution, then the tests
    sol_mod = ModuleType("__sitf_solution__")
    sys_modules["__sitf_solution__"] = sol_mod
    ns = sol_mod.__dict__
    ns["__builtins__"] = real_builtins
    try:
        exec(sol_code, ns)
    except BaseException_ as e:
        report("FAIL", "solution raised " + exc_text(e), 1)
    del P
    tg = dict_(ns)
    tg["__builtins__"] = dict_(private_builtins)
    tg["__name__"] = "__sitf_tests__"
    tg["__sitf_cmp"], tg["__sitf_truth"], tg["__sitf_not"], tg["__sitf_pre"] = h_cmp, h_truth, h_not, h_pre
    try:
        restore()
        exec(test_code, tg)
    except BaseException_ as e:
        where = "" if current[0] is None else " (assert at tests line %d)" % site_lines[current[0]]
        report("FAIL", exc_text(e) + where, 1)
    missed = [site_lines[s] for s in required if hits[s] == 0]
    if missed or sum_(hits) == 0:
        report("FAIL", "not every assert ran (lines %s)" % missed if missed else "no assert ran", 1)
    write(result_fd, ("SITF-PASS %s %d\n" % (nonce, sum_(hits))).encode("ascii"))
    _exit(0)


OPNAMES = {"Eq": "==", "NotEq": "!=", "Lt": "<", "LtE": "<=", "Gt": ">", "GtE": ">=", "Is": "is",
           "IsNot": "is not", "In": "in", "NotIn": "not in"}


def _rewrite(ast, tree):
    # Route every assert through the harness; return (code, line of each site, required sites).
    required_nodes = set()
    for st in tree.body:
        if isinstance(st, ast.Assert):
            required_nodes.add(id(st))
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)) and st.name == "check":
            required_nodes.update(id(s) for s in st.body if isinstance(s, ast.Assert))
    lines, required = [], []

    def call(name, args):
        return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=[])

    def expr(node):   # inside an assert: comparisons and `not` go through the harness
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.AST):
                setattr(node, field, expr(value))
            elif isinstance(value, list):
                setattr(node, field, [expr(v) if isinstance(v, ast.AST) else v for v in value])
        if isinstance(node, ast.Compare):
            ops = tuple(OPNAMES[type(op).__name__] for op in node.ops)
            return call("__sitf_cmp", [ast.Constant(ops), node.left] + list(node.comparators))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return call("__sitf_not", [node.operand])
        return node

    def stmts(body):
        out = []
        for node in body:
            if isinstance(node, ast.Assert):
                site = len(lines)
                lines.append(node.lineno)
                if id(node) in required_nodes:
                    required.append(site)
                node.test = call("__sitf_truth", [ast.Constant(site), expr(node.test)])
                pre = ast.Expr(value=call("__sitf_pre", [ast.Constant(site)]))
                out += [ast.copy_location(pre, node), node]
                continue
            visit(node)
            out.append(node)
        return out

    def visit(node):   # find statement lists at any depth (function bodies, loops, if/try, ...)
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, stmts(value))
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, ast.AST):
                        visit(v)
            elif isinstance(value, ast.AST):
                visit(value)

    tree.body = stmts(tree.body)
    ast.fix_missing_locations(tree)
    return compile(tree, "<tests>", "exec"), lines, required


_main()
'''

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
            out, err, res, why = _collect(proc, result_r, t0 + timeout, output_bytes)
            if why:
                _kill(proc)
            try:
                rc = proc.wait(timeout=max(0.1, t0 + timeout - time.monotonic()) if not why else 5)
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc = proc.wait()
                why = why or "timeout"
        except BaseException:   # e.g. KeyboardInterrupt: never leave the program running
            _kill(proc)
            proc.wait()
            raise
        return _verdict(payload["mode"], rc, out, err, res, why, nonce, time.monotonic() - t0,
                        isolated, output_bytes)
    finally:
        for fd in fds_to_close:
            try:
                os.close(fd)
            except OSError:
                pass
        _rmtree(workdir)


def _collect(proc, result_r, deadline, cap):
    """Read stdout (head), stderr (tail) and the result pipe without ever holding more than the caps."""
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
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = "timeout"
                break
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
    return bytes(out), bytes(err), bytes(res), why


def _verdict(mode, rc, out, err, res, why, nonce, seconds, isolated, cap) -> SandboxResult:
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    r = SandboxResult("failed", rc, stdout, stderr, round(seconds, 4), isolated)
    cpu_killed = rc is not None and rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
    if why == "timeout" or cpu_killed:
        r.status, r.detail = "timeout", "wall-clock limit" if why == "timeout" else "CPU time limit"
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
def run_program(code: str, *, timeout: float = 5.0, cpu_seconds: int = 5, memory_mb: int = 512,
                max_file_mb: int = 8, max_procs: int = 32, output_bytes: int = 64 * 1024) -> SandboxResult:
    """Run a whole program; 'passed' means exit status 0 (the program controls that: see check_program)."""
    return _execute({"mode": "run", "code": code}, isolated=bwrap_available(), timeout=timeout,
                    limits=_limits(cpu_seconds, memory_mb, max_file_mb, max_procs), output_bytes=output_bytes)


def check_program(solution: str, tests: str, *, entry_point: Optional[str] = None, timeout: float = 5.0,
                  cpu_seconds: int = 5, memory_mb: int = 512, max_file_mb: int = 8, max_procs: int = 32,
                  output_bytes: int = 64 * 1024) -> SandboxResult:
    """Run `solution`, then `tests` (assert statements); 'passed' only if the harness saw them all pass.

    With `entry_point`, ``check(<entry_point>)`` is appended to the tests (HumanEval's protocol).
    """
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
