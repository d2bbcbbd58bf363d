"""What the docs say about the tests is true: every test file and test the README and docs/*.md cite exists
(a citation ending in `_` names a family of tests: at least one must exist)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"(?:tests/)?(test_[a-z0-9_]+\.py)(?:::([A-Za-z0-9_]+))?")
NAMED = re.compile(r"`(test_[a-z0-9_]+)`")
NOT_TESTS = {"test_list"}       # MBPP's field of asserts (docs/DESIGN.md section 7), not a test of ours


def defined(name: str, files: list[Path]) -> bool:
    tail = "" if name.endswith("_") else r"\("
    pattern = re.compile(r"^\s*def " + re.escape(name) + tail, re.M)
    return any(pattern.search(f.read_text()) for f in files)


def test_every_test_the_docs_cite_exists():
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for m in CITED.finditer(text):
            f = ROOT / "tests" / m.group(1)
            if not f.exists():
                missing.append(f"{doc.name}: {m.group(0)} (no such file)")
            elif m.group(2) and not defined(m.group(2), [f]):
                missing.append(f"{doc.name}: {m.group(0)} (no such test)")
        for m in NAMED.finditer(text):
            if m.group(1) not in NOT_TESTS and not m.group(1).endswith(".py") and not defined(m.group(1), tests):
                missing.append(f"{doc.name}: `{m.group(1)}` (no such test)")
    assert not missing, "\n".join(missing)
