"""The trusted harness of sandbox.check_program / run_program: runs INSIDE the sandboxed child process.

sandbox.py reads this file as text and hands it to a fresh interpreter (``python -s -S -B -c ...``), which
executes it with ``__name__ == "sitf_harness"``; only then does ``_main()`` run. Importing it as a module
(``sitf_ray.tasks.sandbox_harness``, e.g. to test ``_rewrite``) runs nothing. It is plain, linted Python so that
it can be read, tested and changed like the rest of the package; see sandbox.py's docstring for the threat
model it implements. Everything the check-mode helpers need (builtins included) is bound to locals of
``_main`` before any untrusted code runs, so the helpers reach nothing through a globals or builtins dict
that a solution could modify. The harness defines no classes (a class would be reachable through
``object.__subclasses__()``).
"""
import os
import sys


def _main():
    import ast
    import builtins as real_builtins
    import collections
    import json
    import operator
    import resource
    import types
    write, read, close, getcwd, os_exit = os.write, os.read, os.close, os.getcwd, os._exit
    flushes = (sys.stdout.flush, sys.stderr.flush)   # the real streams, whatever the solution rebinds
    type_, bool_, len_, range_, iter_, str_, sum_ = type, bool, len, range, iter, str, sum
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

    CONTAINERS = {list, tuple, dict, defaultdict, OrderedDict, set, frozenset, deque, dict_keys, dict_items}

    def plain(v):
        """The value the tests may compute with: a canonical copy made of builtin types, or v itself when it
        is an instance of a C type that is not a container (its methods are C code: re.Match, Decimal,
        datetime, functions, modules, iterators); OPAQUE for instances of classes made in Python."""
        c = canon(v)
        if c is not OPAQUE:
            return c
        t = type_(v)
        if c_type(t) and t not in CONTAINERS:
            return v
        return OPAQUE

    def untrusted(what, *vals):
        names = " and ".join(type_name(type_(v)) for v in vals)
        return TypeError_("sitf sandbox: %s on a %s object is not trusted (values the tests compute with must "
                          "be plain data)" % (what, names))

    BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "@": operator.matmul,
              "<<": operator.lshift, ">>": operator.rshift, "&": operator.and_, "|": operator.or_,
              "^": operator.xor}
    UNOPS = {"-": operator.neg, "+": operator.pos, "~": operator.invert}

    def h_bin(op, a, b):
        pa, pb = plain(a), plain(b)
        if pa is not OPAQUE and pb is not OPAQUE:
            return BINOPS[op](pa, pb)
        raise untrusted("'%s'" % op, *[v for v in (a, b) if plain(v) is OPAQUE])

    def h_un(op, a):
        pa = plain(a)
        if pa is OPAQUE:
            raise untrusted("unary '%s'" % op, a)
        return UNOPS[op](pa)

    # Calls: C functions and types that read a value (abs, round, len, str, hash, bool, float, sorted, sum,
    # min, max, math.isclose, ...) get plain arguments (iterators are drained into a list first) and refuse
    # objects of Python classes; structural ones (print, type, getattr, iter, zip, list, ...) and bound
    # methods of containers (append, ...) take anything; functions made in Python (the solution's, the
    # tests' own) are called as they are.
    C_CALLABLES = {type_(len), type_(str.join), type_(object.__init__), type_((1).__add__),
                   type_(dict.__dict__["fromkeys"])}
    builtin_fn = type_(len)
    STRUCTURAL = {id(f) for f in (print, type, id, callable, issubclass, getattr, hasattr, setattr, delattr,
                                  iter, next, enumerate, zip, map, filter, reversed, list, tuple, dict, vars,
                                  dir, range, slice, object, super, repr, format)}
    READING_METHODS = {"count", "index", "remove", "__contains__", "__eq__", "__ne__", "__lt__", "__le__",
                       "__gt__", "__ge__", "__hash__", "__bool__"}
    isinstance_, issubclass_, hasattr_ = isinstance, issubclass, hasattr
    getattr_ = getattr

    def reads_values(f):
        t = type_(f)
        if t is type_:
            return c_type(f) and id(f) not in STRUCTURAL
        if t not in C_CALLABLES or id(f) in STRUCTURAL:
            return False
        if t is builtin_fn:
            owner = getattr_(f, "__self__", None)
            if owner is not None and type_(owner) is not ModuleType:   # a bound method of a C object
                return getattr_(f, "__name__", "") in READING_METHODS
        return True

    def argument(v):
        t = type_(v)
        if c_type(t) and t not in CONTAINERS and t not in ATOMS and hasattr_(t, "__next__"):
            v = list_(v)       # a generator / map / zip: its items are what the function reads
        p = plain(v)
        if p is OPAQUE:
            raise OPAQUE_ARG
        return p

    OPAQUE_ARG = TypeError_("opaque argument")

    def h_call(fn, /, *args, **kw):
        if fn is isinstance_ and len_(args) == 2:    # the real type: a __class__ property may lie
            return issubclass_(type_(args[0]), args[1])
        if not reads_values(fn):
            return fn(*args, **kw)
        try:
            pargs = [argument(a) for a in args]
            pkw = {k: argument(v) for k, v in kw.items()}
        except TypeError_ as e:
            if e is not OPAQUE_ARG:
                raise
            bad = [v for v in list_(args) + list_(kw.values()) if plain(v) is OPAQUE]
            raise untrusted("%s()" % getattr_(fn, "__name__", "call"), *bad[:1]) from None
        return fn(*pargs, **pkw)

    def h_test(v):
        return truth_value(v)

    def h_and(*thunks):
        v = True
        for thunk in thunks:
            v = thunk()
            if not truth_value(v):
                return v
        return v

    def h_or(*thunks):
        v = False
        for thunk in thunks:
            v = thunk()
            if truth_value(v):
                return v
        return v

    OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
           ">": operator.gt, ">=": operator.ge}
    contains = operator.contains

    def cmp1(op, a, b):
        if op == "is":
            return a is b
        if op == "is not":
            return a is not b
        ca, cb = plain(a), plain(b)
        if ca is not OPAQUE and cb is not OPAQUE:   # plain data or C objects: C code compares them
            if op == "in":
                return truth_value(contains(cb, ca))
            if op == "not in":
                return not truth_value(contains(cb, ca))
            return truth_value(OPS[op](ca, cb))
        # an object of a Python class on either side: never ask it (it could say anything)
        if op == "==" or op == "in":
            return False
        if op == "!=" or op == "not in":
            return True
        raise untrusted("'%s'" % op, *[v for v in (a, b) if plain(v) is OPAQUE])

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
    tg["_sitf_cmp"], tg["_sitf_truth"], tg["_sitf_not"], tg["_sitf_pre"] = h_cmp, h_truth, h_not, h_pre
    tg["_sitf_bin"], tg["_sitf_un"], tg["_sitf_call"], tg["_sitf_test"] = h_bin, h_un, h_call, h_test
    tg["_sitf_and"], tg["_sitf_or"] = h_and, h_or
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
BINOPNAMES = {"Add": "+", "Sub": "-", "Mult": "*", "Div": "/", "FloorDiv": "//", "Mod": "%", "Pow": "**",
              "MatMult": "@", "LShift": "<<", "RShift": ">>", "BitAnd": "&", "BitOr": "|", "BitXor": "^"}
UNOPNAMES = {"USub": "-", "UAdd": "+", "Invert": "~"}
# Calls that depend on the caller's frame: wrapping them would change what they see.
FRAME_CALLS = frozenset(["super", "locals", "globals", "vars", "eval", "exec", "dir"])


def _rewrite(ast, tree):
    """Route the tests' own operations through the harness; return (code, line of each assert site, the
    sites that must run).

    Everywhere in the test code: comparisons -> _sitf_cmp, `not` -> _sitf_not, arithmetic -> _sitf_bin /
    _sitf_un, calls -> _sitf_call, `and`/`or` -> _sitf_and/_sitf_or (operands as thunks, so evaluation
    stays lazy), and the tests of if/while/ternaries/comprehensions -> _sitf_test. Each assert becomes
    `_sitf_pre(site)` (restore the stdlib) + `assert _sitf_truth(site, <test>)`.
    """
    required_nodes = set()
    for st in tree.body:
        if isinstance(st, ast.Assert):
            required_nodes.add(id(st))
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)) and st.name == "check":
            required_nodes.update(id(s) for s in st.body if isinstance(s, ast.Assert))
    lines, required = [], []

    def call(name, args, keywords=()):
        return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=list(keywords))

    def thunk(node):
        return ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[],
                                             kwarg=None, defaults=[]), body=node)

    def scoped(node):   # a walrus / yield / await inside a thunk would change meaning: leave that BoolOp alone
        return any(isinstance(n, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(node))

    def wrap(node):   # one expression node whose children are already rewritten
        if isinstance(node, ast.Compare):
            ops = tuple(OPNAMES[type(op).__name__] for op in node.ops)
            return call("_sitf_cmp", [ast.Constant(ops), node.left] + list(node.comparators))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return call("_sitf_not", [node.operand])
            return call("_sitf_un", [ast.Constant(UNOPNAMES[type(node.op).__name__]), node.operand])
        if isinstance(node, ast.BinOp):
            return call("_sitf_bin", [ast.Constant(BINOPNAMES[type(node.op).__name__]), node.left, node.right])
        if isinstance(node, ast.BoolOp) and not scoped(node):
            name = "_sitf_and" if isinstance(node.op, ast.And) else "_sitf_or"
            return call(name, [thunk(v) for v in node.values])
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in FRAME_CALLS:
                return node
            return call("_sitf_call", [node.func] + list(node.args), node.keywords)
        if isinstance(node, ast.IfExp):
            node.test = call("_sitf_test", [node.test])
        return node

    def tx(node):   # rewrite a node and everything below it
        if isinstance(node, ast.pattern):   # match/case patterns hold literals only
            return node
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, stmts(value))
            elif isinstance(value, list):
                setattr(node, field, [tx(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, tx(value))
        if isinstance(node, (ast.If, ast.While)):
            node.test = call("_sitf_test", [node.test])
        elif isinstance(node, ast.comprehension):
            node.ifs = [call("_sitf_test", [c]) for c in node.ifs]
        elif isinstance(node, ast.expr):
            return wrap(node)
        return node

    def stmts(body):
        out = []
        for node in body:
            if isinstance(node, ast.Assert):
                site = len(lines)
                lines.append(node.lineno)
                if id(node) in required_nodes:
                    required.append(site)
                node.test = call("_sitf_truth", [ast.Constant(site), tx(node.test)])
                if node.msg is not None:
                    node.msg = tx(node.msg)
                pre = ast.Expr(value=call("_sitf_pre", [ast.Constant(site)]))
                out += [ast.copy_location(pre, node), node]
                continue
            out.append(tx(node))
        return out

    tree.body = stmts(tree.body)
    ast.fix_missing_locations(tree)
    return compile(tree, "<tests>", "exec"), lines, required


if __name__ == "sitf_harness":
    _main()
