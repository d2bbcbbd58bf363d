"""Final numeric answers of the math tasks (arith, gsm8k, mmlu_math): one parser and one equality.

    extract_final_number("The answer is $9{,}500.")       -> "9500"
    extract_final_number("The answer is −3.")             -> "-3"      (U+2212 minus)
    extract_final_number(r"so it is $\\frac{3}{4}$")      -> "0.75"
    extract_final_number("The answer is 2 1/2 cups")      -> "2.5"     (mixed number)
    extract_final_number(r"\\boxed{1\\,000}")              -> "1000"
    numbers_equal("25%", "0.25") and numbers_equal("25%", "25")        (a percentage matches either)

Where the answer is: the last ``\\boxed{..}`` (or ``\\fbox``), else the last "answer is .." / "answer: .."
line (from its last ``=`` on, so "The answer is 5 + 3 = 8" gives 8), else the last ``#### ..``, else the
last number in the text. Forms understood: signs (``-``, U+2212, en dash, fullwidth), thousands
separators of every kind used in print (``,`` ``{,}`` ``\\,`` ``'`` ``_`` thin, narrow and no-break
spaces, a single space between 3-digit groups; one kind per number, groups of exactly three), decimals
(also ``.5``), ``1.5e3`` and ``1.5 \\times 10^{3}``, fractions (``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``,
``½``), mixed numbers (``2 1/2``, ``2\\frac12``, ``2½``), ``$``/``\\$`` and unit words after the number,
``%``/``\\%``/"percent", LaTeX delimiters (``$..$``, ``\\(..\\)``, ``\\[..\\]``), ``\\text{..}`` and
trailing punctuation. A ``-`` right after a digit, letter or closing bracket is a binary minus
("10-7" gives 7, not -7).

Not understood (no number or the wrong one): symbolic answers (``\\sqrt{2}``, ``\\frac{\\pi}{2}``,
``2x+1``), decimal commas (``3,5``), words ("seven"), ``.`` as a thousands separator.

Why not Hugging Face's math-verify: 0.9.0 installs cleanly on Python 3.11 (pure Python; it adds
latex2sympy2_extended and antlr4-python3-runtime) and reads LaTeX well, but on the forms of issue 14 it
answered ``$9{,}500`` -> 9, ``−3`` -> nothing, ``2 1/2`` -> 1, ``3\\frac{1}{2}`` -> 1/2,
``1\\u202f000`` -> 1 and ``\\dfrac{3}{4}`` -> nothing (measured 2026-11), its parse refuses to run
outside the main thread unless its timeout is switched off (it uses SIGALRM), and importing it takes
1.8 s. Every answer these tasks grade is a number, so a number parser is the better check.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction
from typing import Optional

_MINUS = {"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"}
_DIGITS = {0xFF10 + i: str(i) for i in range(10)}            # fullwidth digits
_VULGAR = {c: Fraction(unicodedata.numeric(c)).limit_denominator(16) for c in "¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞"}
_TABLE = str.maketrans({**_MINUS, **_DIGITS, "\u2044": "/"})
_THIN = "\u2009"   # what LaTeX spacing commands between digit groups become

_LATEX_SUBS = [
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right)\b"), ""),
    (re.compile(r"\{,\}"), ","),                       # 9{,}500
    (re.compile(r"\\[,;:]|\\ |~"), _THIN),             # 9\,500, 9\ 500
    (re.compile(r"\\!"), ""),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\\$|\$|\\\(|\\\)|\\\[|\\\]"), ""),  # currency and math delimiters carry no value
    (re.compile(r"\^\s*\{?\\circ\}?|\\circ|\\degree"), ""),
    (re.compile(r"\\(?:text|mathrm|textrm|textbf|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?"), r"e\1"),
]
_FRAC = re.compile(r"\\frac\s*(?:\{\s*(-?[\d.]+)\s*\}|(\d))\s*(?:\{\s*(-?[\d.]+)\s*\}|(\d))")
_MIXED_FRAC = re.compile(r"(?<=\d)\s*(?=\\frac)")

# One number. Groups: sign, integer part (grouped or not), decimals, exponent; then a mixed-number
# fraction, or a plain fraction; then a percent sign.
_SEPS = ",'_ \u00a0\u2007\u2008\u2009\u200a\u202f"
_NUM = re.compile(r"""
    (?<![\w.])(?P<sign>-)?
    (?P<int>\d{1,3}(?P<sep>[%s])\d{3}(?!\d)(?:(?P=sep)\d{3}(?!\d))*|\d+|(?=\.\d))
    (?P<dec>\.\d+)?
    (?P<exp>[eE][-+]?\d+(?![\w]))?
    (?:
        \s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)(?!\d|\.\d)
      | \s*/\s*(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d)
    )?
    (?P<pct>\s*(?:%%|percent\b))?
""" % re.escape(_SEPS), re.X)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER = re.compile(r"(?i)\banswer\s*(?:is\b\s*:?|:|=)")
_HASHES = re.compile(r"####")
_PLAIN_INT = re.compile(r"-?\d+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def clean(text: str) -> str:
    """Text with the Unicode and LaTeX spellings of numbers rewritten into plain ones."""
    t = text.translate(_TABLE)
    if any(c in _VULGAR for c in t):
        t = "".join(f" {_VULGAR[c].numerator}/{_VULGAR[c].denominator}" if c in _VULGAR else c for c in t)
    if "\\" in t or "$" in t or "{" in t or "~" in t or "×" in t or "*" in t:
        for pat, rep in _LATEX_SUBS:
            t = pat.sub(rep, t)
        t = _MIXED_FRAC.sub(" ", t)
        t = _FRAC.sub(lambda m: f"{m.group(1) or m.group(2)}/{m.group(3) or m.group(4)}", t)
    return t


def _value(m: re.Match, text: str) -> Optional[tuple[Fraction, bool]]:
    """(value, is_percent) of one _NUM match; None when it is not a usable number (x/0)."""
    body = m.group("int")
    if m.group("sep"):
        body = body.replace(m.group("sep"), "")
    v = Fraction((body or "0") + (m.group("dec") or "") + (m.group("exp") or ""))
    if m.group("mnum"):
        num, den = int(m.group("mnum")), int(m.group("mden"))
        if den == 0 or m.group("dec") or m.group("exp"):
            return None
        v = v + Fraction(num, den) if num < den else v * Fraction(num, den)   # "2 1/2" vs "2 3/2"
    elif m.group("den"):
        den = Fraction(m.group("den"))
        if den == 0:
            return None
        v = v / den
    start = m.start()
    if m.group("sign"):
        before = text[start - 1] if start > 0 else " "
        if not (before.isalnum() or before in ")]}"):     # "10-7" is a subtraction, not -7
            v = -v
    return v, bool(m.group("pct"))


def _numbers(text: str) -> list[tuple[Fraction, bool]]:
    out = []
    for m in _NUM.finditer(text):
        if m.group(0).strip() in ("", "-"):
            continue
        val = _value(m, text)
        if val is not None:
            out.append(val)
    return out


def format_number(v: Fraction, percent: bool = False) -> str:
    """Canonical text: '9500', '-3', '0.75', '1/3' (a non-terminating decimal stays a fraction), '25%'."""
    if v.denominator == 1:
        s = str(v.numerator)
    else:
        d = v.denominator
        for p in (2, 5):
            while d % p == 0:
                d //= p
        if d == 1:   # terminating decimal: exact digits
            digits = 0
            while (v * 10 ** digits).denominator != 1:
                digits += 1
            s = f"{'-' if v < 0 else ''}{abs(v.numerator) * 10 ** digits // v.denominator // 10 ** digits}." \
                f"{abs(v.numerator) * 10 ** digits // v.denominator % 10 ** digits:0{digits}d}"
        else:
            s = f"{v.numerator}/{v.denominator}"
    return s + ("%" if percent else "")


def parse_number(s: str) -> Optional[tuple[Fraction, bool]]:
    """(value, is_percent) of the first number in `s` (after `clean`), None if there is none."""
    nums = _numbers(clean(s))
    return nums[0] if nums else None


def normalize_number(s: str) -> Optional[str]:
    """The first number in `s` as canonical text ('$1,234.50' -> '1234.5', '7.0' -> '7'); None if none."""
    p = parse_number(s)
    return format_number(*p) if p else None


def _boxed(text: str) -> list[str]:
    """Contents of every \\boxed{..} (nested braces matched)."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1] if depth == 0 else text[m.end():])
    return out


def _after_equals(span: str) -> str:
    """'5 + 3 = 8' -> ' 8', 'x = 5' -> ' 5'; a span with words before its '=' is kept whole ('7 as 2 = 2')."""
    parts = span.split("=")
    i = 0
    while i + 1 < len(parts) and not _WORD.search(parts[i]):
        i += 1
    return "=".join(parts[i:])


def extract_final_number(text: str) -> Optional[str]:
    """The final answer of a solution as canonical text (see the module doc for where it is looked for)."""
    for content in reversed(_boxed(text)):
        v = normalize_number(content)
        if v is not None:
            return v
    marks = list(_ANSWER.finditer(text))
    for m in reversed(marks):
        v = normalize_number(_after_equals(clean(text[m.end():].split("\n", 1)[0])))
        if v is not None:
            return v
    for m in reversed(list(_HASHES.finditer(text))):
        v = normalize_number(text[m.end():].split("\n", 1)[0])
        if v is not None:
            return v
    nums = _numbers(clean(text))
    return format_number(*nums[-1]) if nums else None


def numbers_equal(a: Optional[str], b: Optional[str], rel: float = 1e-6) -> bool:
    """Same number? Exact for integers; otherwise within `rel` (relative, at least absolute 1e-6 near 0).

    A percentage equals both its number and its hundredth ('25%' == '25' == '0.25').
    """
    if a is None or b is None:
        return False
    if _PLAIN_INT.fullmatch(a) and _PLAIN_INT.fullmatch(b):   # the fast exact path (arith, most gsm8k)
        return int(a) == int(b)
    pa, pb = parse_number(a), parse_number(b)
    if pa is None or pb is None:
        return a.strip() == b.strip()
    (va, pct_a), (vb, pct_b) = pa, pb
    cands_a = [va, va / 100] if pct_a else [va]
    cands_b = [vb, vb / 100] if pct_b else [vb]
    return any(abs(x - y) <= rel * max(1, abs(y)) for x in cands_a for y in cands_b)


__all__ = ["clean", "parse_number", "normalize_number", "format_number", "extract_final_number",
           "numbers_equal"]
