"""The package's shape (docs/DESIGN.md, "The map"): role folders in a one-way layer order, no import circle,
at most 10 top-level modules, no function over 80 lines (the sandbox harness aside), every SIPF stage in
the folder its role names. Imports are read from the source with `ast`, lazy ones inside functions too."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sitf_ray"

# Lowest first. A module may import its own layer and any layer below, never one above (docs/DESIGN.md).
LAYERS = [
    {"config", "methods", "data"},
    {"tasks"},
    {"runs"},
    {"cluster"},
    {"rollout"},
    {"train"},
    {"feedback"},
    {"serving"},
    {"pipeline"},
    {"sweep"},
    {"bench"},
    {"cli"},
]
STAGES = {   # SIPF stage -> (role folder, function)
    "sample": ("rollout", "stage_sample"), "broadcast": ("rollout", "load_policy"),
    "evaluate": ("rollout", "stage_eval"), "label": ("feedback", "stage_label"),
    "PRM": ("feedback", "stage_prm"), "score": ("feedback", "stage_score"), "pairs": ("feedback", "stage_pairs"),
    "update": ("train", "stage_train"), "M_0": ("train", "build_m0"),
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def imports(name: str, path: Path, mods: dict) -> set[str]:
    """sitf_ray modules `name` imports anywhere in its source (resolved to the longest module that exists)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("sitf_ray") and not name.startswith(t + "."):
                out.add(t)
    return out


def layer(name: str) -> int:
    key = name.split(".")[1] if name.count(".") else ""
    for i, group in enumerate(LAYERS):
        if key in group:
            return i
    raise AssertionError(f"{name}: in no layer of tests/test_layout.py LAYERS (add it there and in docs/DESIGN.md)")


def test_imports_go_one_way_down_the_layers():
    mods = modules()
    bad = []
    for name, path in mods.items():
        if name == "sitf_ray":
            continue
        for t in imports(name, path, mods):
            if t != "sitf_ray" and layer(t) > layer(name):
                bad.append(f"{name} (layer {layer(name)}) imports {t} (layer {layer(t)})")
    assert not bad, "imports from a lower layer to an upper one:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    mods = modules()
    edges = {m: imports(m, p, mods) for m, p in mods.items()}
    # Tarjan's strongly connected components, iteratively small enough here to recurse
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not comps, f"import circles: {comps}"


def test_at_most_ten_top_level_modules_and_every_role_folder_is_a_package():
    top = sorted(p.stem for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 10, top
    for role in ("tasks", "runs", "cluster", "rollout", "train", "feedback", "serving"):
        init = PKG / role / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{role}/ needs a docstring"


def test_no_function_over_80_lines():
    long = []
    for p in PKG.rglob("*.py"):
        if p.name == "sandbox_harness.py":     # its single body is its security design (docs/RELIABILITY.md)
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append(f"{p.relative_to(PKG)}:{n.name} {n.end_lineno - n.lineno + 1} lines")
    assert not long, long


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_sipf_stage_lives_in_its_role_folder(stage):
    role, fn = STAGES[stage]
    where = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
             if re.search(rf"^def {fn}\(", p.read_text(), re.M)]
    assert where and all(w.startswith(role + "/") for w in where), (stage, where)


def test_no_hidden_attribute_switches():
    """A caller passes what it wants as an argument, never by setting an attribute on an object it dug out with
    getattr(obj, "name", obj) (how part-way resume used to be switched on: `getattr(pool, "pool", pool)
    .partial_dir = folder`)."""
    hits = []
    for p in PKG.rglob("*.py"):
        for fn in ast.walk(ast.parse(p.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            dug = {n.targets[0].id for n in ast.walk(fn)
                   if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
                   and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "getattr"
                   and len(n.value.args) == 3}
            hits += [f"{p.relative_to(PKG)}:{n.lineno}" for n in ast.walk(fn)
                     if isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                                          and t.value.id in dug for t in n.targets)]
    assert not hits, hits


def test_git_ignores_no_file_of_the_package():
    """Every file of sitf_ray/ reaches a commit and a `ray job submit` upload: a .gitignore rule meant for run
    outputs (`runs/`) also matched the package's sitf_ray/runs/, whose new modules were then never committed
    (a clean clone failed with "No module named 'sitf_ray.runs.context'")."""
    root = PKG.parent
    if not (root / ".git").exists():
        return          # an installed copy, not a checkout: nothing to commit from here
    git = ["git", "-C", str(root), "ls-files", "--exclude-standard", "-i"]
    untracked = subprocess.run(git + ["--others", "sitf_ray"], capture_output=True, text=True, check=True).stdout
    tracked = subprocess.run(git + ["--cached", "sitf_ray"], capture_output=True, text=True, check=True).stdout
    ignored = [f for f in (untracked + tracked).split() if "__pycache__" not in f and not f.endswith(".pyc")]
    assert not ignored, f"files of the package that .gitignore matches: {ignored}"

