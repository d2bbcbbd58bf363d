"""Code in model completions: the fenced blocks models write, and which block is the solution.

Shared by the code tasks (mbpp, humaneval). Fence shapes understood: ``` or ~~~ of any length >= 3,
indented fences (inside a list), info strings ("python", "py", "Python3", "{python}", 'python
title="x"', none), code on the fence line ("```python def f(x):", "```def f(x): return x```"), a block
closed at the end of a code line ("    return x```") or by a fence followed by prose, a block left open at the
end of a cut-off generation; blocks marked as another language (bash, text, output, json, ...) are skipped.
"""
from __future__ import annotations

import re
from typing import Optional

# An opening fence: ``` or ~~~ (3 or more), maybe indented (inside a list), then an info string
# ("python", "py", "Python3", "{python}", 'python title="x"', ...) or, written loosely, code on the same line
# ("```python def f(x):", "```def f(x): return x```"). Closed by a line that starts with the same
# character, at least as long (any words after it are prose), or by a code line that ends with the fence
# ("    return x```"); a block still open at the end of the text (a cut-off generation) runs to the end.
_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<rest>.*)$")
_LANG = re.compile(r"^\{?\s*(?P<lang>[A-Za-z][\w+#.-]*)\s*\}?(?=\s|$)")
_NOT_PYTHON = re.compile(r"^\{?\s*(bash|sh|shell|console|text|txt|output|plaintext|json|yaml|toml|ini|"
                         r"sql|c|cpp|java|js|javascript|diff)\b", re.I)
# What starts a line of Python (not an info string's attributes such as title="x")
_CODE_START = re.compile(r"^(?:def|async|class|import|from|return|print|for|while|if|with|try|assert|lambda|"
                         r"@|#)(?:\W|$)|^\w+\s*(?:=[^=\"']|\()")
_IMPORT = re.compile(r"^(?:import|from)\s+\w")


def _open_fence(line: str):
    """(indent, fence, info, code on the fence line or None, closed on the same line) or None."""
    m = _OPEN.match(line)
    if not m:
        return None
    fence, rest = m.group("fence"), m.group("rest").strip()
    closed = rest.endswith(fence[0] * 3)
    if closed:                                  # ```def f(x): return x```
        rest = rest.rstrip(fence[0]).rstrip()
    if fence[0] == "`" and "`" in rest:          # inline code span (``` ... ` ...), not a fence
        return None
    lang = _LANG.match(rest)
    info, code = rest, None
    if _CODE_START.match(rest):                 # no info string, code at once
        info, code = "", rest
    elif lang and rest[lang.end():].strip() and _CODE_START.match(rest[lang.end():].strip()):
        info, code = lang.group(0).strip(), rest[lang.end():].strip()      # ```python def f(x):
    elif closed and rest:
        info, code = "", rest
    return len(m.group("indent")), fence, info, code, closed


def fenced_blocks(text: str) -> list[str]:
    """The code of every fenced block in `text`, in order (blocks marked as another language skipped).

    Loosely written fences are read as a reader would: code on the opening fence's line, a block closed at
    the end of a code line or by a fence followed by prose, ~~~ fences, fences indented in a list item, a
    block never closed (cut-off generation)."""
    lines = text.replace("\r\n", "\n").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opened = _open_fence(lines[i])
        if not opened:
            i += 1
            continue
        indent, fence, info, code, closed = opened
        body, i = ([code] if code is not None else []), i + 1
        while not closed and i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)):
                after = stripped.lstrip(fence[0]).strip()
                if _LANG.fullmatch(after) and (after.lower().lstrip("{").startswith("py") or _NOT_PYTHON.match(after)):
                    i -= 1                       # "```python" again: this block ends, a new one opens here
                break                            # the closing fence (words after it are prose)
            line = line[indent:] if line[:indent].strip() == "" else line
            if line.rstrip().endswith(fence) and line.strip() != fence:
                body.append(line.rstrip()[: -len(fence)].rstrip())   # "    return x```"
                break
            body.append(line)
            i += 1
        i += 1
        if not _NOT_PYTHON.match(info):
            blocks.append("\n".join(body))
    return blocks


def _defines(code: str, name: Optional[str]) -> bool:
    fn = re.escape(name) if name else r"\w+"
    return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{fn}[ \t]*\(", code, re.M) is not None


def pick_block(blocks: list[str], name: Optional[str]) -> Optional[str]:
    """The block that defines `name` (the last one: a corrected version comes after the draft), else the
    last that defines any function, else the first; imports of the other blocks are put in front of it."""
    if not blocks:
        return None
    chosen = next((b for b in reversed(blocks) if _defines(b, name)), None) if name else None
    if chosen is None:
        chosen = next((b for b in reversed(blocks) if _defines(b, None)), blocks[0])
    have = set(chosen.split("\n"))
    imports = [ln for b in blocks if b is not chosen for ln in b.split("\n") if _IMPORT.match(ln) and ln not in have]
    return "".join(ln + "\n" for ln in dict.fromkeys(imports)) + chosen


__all__ = ["fenced_blocks", "pick_block"]
