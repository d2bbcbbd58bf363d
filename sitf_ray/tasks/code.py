"""Code in model completions: the fenced blocks models write, and which block is the solution.

Shared by the code tasks (mbpp, humaneval). Fence shapes understood: ``` or ~~~ of any length >= 3,
indented fences (inside a list), info strings ("python", "py", "Python3", "{python}", 'python
title="x"', none), a block left open at the end of a cut-off generation; blocks marked as another
language (bash, text, output, json, ...) are skipped.
"""
from __future__ import annotations

import re
from typing import Optional

# A fence line: ``` or ~~~ (3 or more), maybe indented (inside a list), maybe with an info string
# ("python", "py", "Python3", "{python}", 'python title="x"', ...). Closed by the same character, at least
# as long; a block still open at the end of the text (a cut-off generation) runs to the end.
_FENCE_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*?)[ \t]*$")
_NOT_PYTHON = re.compile(r"^\{?\s*(bash|sh|shell|console|text|txt|output|plaintext|json|yaml|toml|ini|"
                         r"sql|c|cpp|java|js|javascript|diff)\b", re.I)
_IMPORT = re.compile(r"^(?:import|from)\s+\w")


def fenced_blocks(text: str) -> list[str]:
    """The code of every fenced block in `text`, in order (blocks marked as another language skipped)."""
    lines = text.replace("\r\n", "\n").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE_LINE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent, info = m.group("fence"), len(m.group("indent")), m.group("info")
        body, i = [], i + 1
        while i < len(lines):
            close = _FENCE_LINE.match(lines[i])
            if close and not close.group("info") and close.group("fence")[0] == fence[0] \
                    and len(close.group("fence")) >= len(fence):
                break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
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
