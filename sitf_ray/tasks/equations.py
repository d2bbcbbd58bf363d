"""Calculator check of the arithmetic a model writes: is every `a op b = c` in a solution true?

The paper's official code drops GSM8K samples whose calculator annotations (`<<48/2=24>>`) are false; our
solutions carry no annotations, so the equations are read from the text itself:

    equations_true("Natalia sold 48/2 = 24 clips in May.")              -> True
    equations_true("She pays $1,200 + $300 = $1,500 in total")         -> True
    equations_true("3 hours * 60 minutes/hour = 180 minutes")          -> True   (unit words are skipped)
    equations_true("20% of 50 = 10")                                   -> True   ('of' after a % is times)
    equations_true("5 + 3 = 8 + 2 = 10")                               -> True   (a running chain)
    equations_true("12 + 7 = 20.")                                     -> False
    equations_true("12 + 7 = 19 = 20")                                 -> False  (every link of a chain)
    equations_true("Let x be the cost. 2x + 3 = 11")                   -> True   (algebra is not checked)

Numbers are read by the tasks' one number parser (`answers.py`: thousands separators, decimals, `$`,
`%`, fractions, LaTeX, Unicode minus and digits). An equation is an `=` (or `==`, "equals") with an
arithmetic expression on at least one side: numbers, `+ - * / ^` (also `x`, `×`, `÷`, `·`, `**`, "plus",
"minus", "times"), parentheses, implicit products `2(3+4)`, "1 and 1/4"; a tight `a/b` is one number
("25 / 1/3" is 25 / (1/3), as people mean it), a spaced `/` an operator. Unit words between a number and
an operator or `=` are skipped ("3 hours * 60 minutes", "$5/hour"). An `=` between two plain numbers is
checked only as a link of a chain that holds a computation ("12 + 7 = 19 = 20", unless the two carry
different units: "12 * 1 = 12 inches = 1 foot"); "1 dozen = 12" and "2 hours = 120 minutes" are unit
conversions, not arithmetic. A left side that is one number with words around it and a computation on
the right ("2 hours = 2 * 60") is not checked either. A step without an equation passes.

How a side is compared: a single number written with d decimals claims its value rounded or truncated to
d decimals ("10 / 3 = 3.33", "7 / 2 = 3" pass; "12 + 7 = 19.9" fails; an integer computation must be
exact), unless `exact=True` (the arith task: only exact equalities). A percentage reads as its hundredth
or as its number, consistently over one equation ("50 * 20% = 10", "25% + 15% = 40%"). A computation
that cannot be evaluated (x/0, a huge power) makes its equation false. A chain "a = b = c" is read as
every link true, or as a running computation ("5 + 3 = 8 + 2 = 10": each left side equals the number
that opens the next side).

What a model could do to slip a false equation past it, and what it does about it: trailing punctuation,
units, `$`, `%`, missing spaces, `==`, Unicode digits, markdown emphasis, a list number before it ("1)"),
a line break before `=` or after an operator (lines are joined there), a false link in a chain, a
dangling operator after it, parentheses around it: all checked (tests/test_checker.py tries each).
Not read, so not checked: words as the relation ("12 plus 7 is 20"), a variable or a word phrase as an
operand ("x + 7 = 20", "Total apples + 3 = 8"): the filter cannot see arithmetic it cannot read.
On the vendored GSM8K data: all 27,998 calculator annotations pass; 49 of 8,792 gold solutions fail,
nearly all of them the data set's own slips ("8*3 = 240", "14*20=140 minutes").
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Optional

from sitf_ray.tasks.answers import _NUM, _value, clean

# --------------------------------------------------------------------------------------------- tokens
NUM, OP, LP, RP, EQ, WORD, OTHER = "num", "op", "(", ")", "=", "word", "other"

_SYMBOLS = [
    # markdown emphasis around an equation ('**48 / 2 = 24**', '*12 + 7 = 19*', '__x__') is not arithmetic
    (re.compile(r"(?<![\w)*])(\*{1,2})(?=\S)(.+?)(?<=\S)\1(?![\w(*])"), r" \2 "),
    (re.compile(r"^\s*\*\*|\*\*\s*$|_"), " "),
    (re.compile(r"\bplus\b", re.I), "+"), (re.compile(r"\bminus\b", re.I), "-"),
    (re.compile(r"\\times|\\cdot|[×∗·⋅✕]"), "*"), (re.compile(r"\\div|[÷∶]"), "/"),
    (re.compile(r"\*\*"), "^"), (re.compile(r"={2,}|\bequals\b", re.I), "="),
    (re.compile(r"\\left|\\right"), "")]
_TIMES_X = re.compile(r"(?<=[\d)%])\s*[xX]\s*(?=[\d(.])")
# continuation lines: an operator or '=' at the end of a line, or at the start of the next one
_JOIN = [re.compile(r"(?<=[=+*/^×÷])[ \t]*\n\s*"), re.compile(r"[ \t]*\n\s*(?=[=+*/^×÷])")]
_WORD_RE = re.compile(r"[^\W\d]+", re.U)
_MAX_EXP = 60          # largest |exponent| in 1e60 or 2^60; beyond it a value is not evaluated
_MAX_BITS = 4096
_UNIT_WORDS = 4        # at most this many words between a number and an operator are read as its unit


class _Tok:
    __slots__ = ("kind", "text", "value", "pct", "ulp", "frac", "unit")

    def __init__(self, kind, text, value=None, pct=False, ulp=Fraction(0), frac=False):
        self.kind, self.text, self.value, self.pct, self.ulp, self.frac = kind, text, value, pct, ulp, frac
        self.unit: tuple = ()  # its unit: '$' before it, the words skipped after it

    def __repr__(self):
        return f"{self.kind}:{self.text}"


_CURRENCY = re.compile(r"\\?\$(?=\s*[\d.])")
_CLOCK = re.compile(r"(?<![\w.])\d{1,2}:\d{2}(?::\d{2})?(?!\d)")


def _number(m: re.Match, t: str) -> _Tok:
    """A number token from one _NUM match; value None when it cannot be evaluated (x/0, 1e999)."""
    frac = bool(m.group("den") or m.group("mnum"))
    exp = int(m.group("exp")[1:]) if m.group("exp") else 0
    if abs(exp) > _MAX_EXP or len(m.group(0)) > 400:
        return _Tok(NUM, m.group(0), None, frac=frac)
    v = _value(m, t)
    if v is None:
        return _Tok(NUM, m.group(0), None, frac=True)
    ulp = Fraction(0) if frac else Fraction(10) ** (exp - len((m.group("dec") or ".")[1:]))
    return _Tok(NUM, m.group(0), v[0], pct=v[1], ulp=ulp, frac=frac)


def tokens(line: str) -> list[_Tok]:
    """Numbers (answers.py's parser), operators, brackets, '=', words and other characters of one line."""
    t = clean(_CURRENCY.sub("\u00a4", line))
    for pat, rep in _SYMBOLS:
        t = pat.sub(rep, t)
    t = _TIMES_X.sub(" * ", t)
    out, i, n, currency = [], 0, len(t), False
    while i < n:
        c = t[i]
        if c.isspace():
            i += 1
            continue
        if c == "\u00a4":
            currency = True
            i += 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and t[i + 1].isdigit()):
            clock = _CLOCK.match(t, i)
            m = None if clock else _NUM.match(t, i)
            if m and m.group(0).strip():
                g = m.group(0)
                slash = g.find("/")
                if m.group("den") and (m.group("pct") or g[slash - 1].isspace() or g[slash + 1].isspace()):
                    # '25 / 1/3' and '168/20%': a spaced slash is an operator, a % belongs to the divisor;
                    # only a tight 'a/b' is one number (so '25 / 1/3' is 25 / (1/3), as people mean it)
                    m = _NUM.match(t[:m.start() + slash].rstrip(), i) or m
                tok = _number(m, t)
                if currency:
                    tok.unit = ("$",)
                out.append(tok)
                i, currency = m.end(), False
                continue
            j = clock.end() if clock else i + 1
            while j < n and (t[j].isalnum() or t[j] in "._"):
                j += 1
            out.append(_Tok(WORD, t[i:j]))     # '7:50', digits glued to letters ('x3', '1.2.3'): not numbers
            i, currency = j, False
            continue
        currency = False
        if c in "+-*/^":
            out.append(_Tok(OP, c))
        elif c in "([{":
            out.append(_Tok(LP, c))
        elif c in ")]}":
            out.append(_Tok(RP, c))
        elif c == "=":
            if not (out and out[-1].kind == EQ):
                out.append(_Tok(EQ, c))
        else:
            m = _WORD_RE.match(t, i)
            if m:
                out.append(_Tok(WORD, m.group(0)))
                i = m.end()
                continue
            out.append(_Tok(OTHER, c))
        i += 1
    return _read_units(_times_words(out))


# words that are never part of a unit ("by 100/75 gives the total amount = ...")
_NOT_UNITS = frozenset("""the is are was were be been so and or then than which that because since gives give
gets get got makes make made equals total in on at to from with into he she they it we you his her their its
has have had will would can could this these those there thus therefore hence if when while after before
left remaining altogether of""".split())


def _is_unit(tok: _Tok) -> bool:
    """A word that can be a unit: two letters or more ('x', 'n' are variables and stop an expression),
    not a function word."""
    return tok.kind == WORD and len(tok.text) > 1 and tok.text.isalpha() and tok.text.lower() not in _NOT_UNITS


def _times_words(toks: list[_Tok]) -> list[_Tok]:
    """'100 basketballs x (10 / 100)', '2 times 3': 'x' after a number (and its unit) and 'times' between
    two numbers are products; '1 and 1/4' is a mixed number."""
    i = 0
    while i + 2 < len(toks):
        a, w, b = toks[i:i + 3]
        if w.kind == WORD and w.text == "and" and a.kind == NUM and b.kind == NUM and b.frac and not a.frac \
                and not a.pct and not b.pct and a.value is not None and b.value is not None \
                and a.value.denominator == 1 and a.value >= 0 and 0 < b.value < 1:
            toks[i:i + 3] = [_Tok(NUM, f"{a.text} and {b.text}", a.value + b.value, frac=True)]
            toks[i].unit = a.unit
        i += 1
    for i, tok in enumerate(toks):
        if tok.kind != WORD or i + 1 >= len(toks) or toks[i + 1].kind not in (NUM, LP):
            continue
        if tok.text in ("x", "X"):
            j = i - 1
            while j >= 0 and i - j <= _UNIT_WORDS and _is_unit(toks[j]):
                j -= 1
            if j >= 0 and toks[j].kind in (NUM, RP):
                toks[i] = _Tok(OP, "*")
        elif tok.text.lower() == "times" and i > 1 and toks[i - 1].kind == NUM and toks[i + 1].kind == NUM \
                and toks[i - 2].kind != EQ:        # not '= 20 times 2 people'
            toks[i] = _Tok(OP, "*")
    return toks


def _read_units(toks: list[_Tok]) -> list[_Tok]:
    """Drop unit words ('3 hours * 60 minutes/hour'), turn 'of' after a % or fraction into '*'."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        prev = out[-1] if out else None
        value_before = prev is not None and prev.kind in (NUM, RP)
        if tok.kind == WORD and tok.text.lower() == "of" and prev is not None and prev.kind == NUM \
                and not (len(out) > 1 and out[-2].kind == EQ) and (prev.pct or prev.frac or (prev.value is not None and prev.value.denominator != 1)) \
                and i + 1 < len(toks) and toks[i + 1].kind in (NUM, LP):
            out.append(_Tok(OP, "*"))
            i += 1
            continue
        if value_before and _is_unit(tok):
            # words up to an operator or '=' are the number's unit; a '/word' inside them is a rate
            j, words = i, []
            while j < len(toks) and len(words) <= _UNIT_WORDS:
                if _is_unit(toks[j]):
                    words.append(toks[j].text.lower())
                    j += 1
                elif toks[j].kind == OP and toks[j].text == "/" and j + 1 < len(toks) and _is_unit(toks[j + 1]):
                    words.append("/")
                    j += 1
                else:
                    break
            if len(words) <= _UNIT_WORDS and (j == len(toks) or toks[j].kind in (OP, EQ, RP, OTHER)
                                              or toks[j].text.lower() in _NOT_UNITS):   # '120 minutes left'
                prev.unit = prev.unit + tuple(words)
                i = j
                continue
        if tok.kind == OP and tok.text == "/" and value_before and i + 1 < len(toks) and _is_unit(toks[i + 1]):
            j = i + 1                          # '$5/hour': a rate, not a division
            while j < len(toks) and _is_unit(toks[j]) and j - i <= _UNIT_WORDS:
                j += 1
            prev.unit = prev.unit + ("/",) + tuple(x.text.lower() for x in toks[i + 1:j])
            i = j
            continue
        out.append(tok)
        i += 1
    return out


# -------------------------------------------------------------------------------------------- parsing
class _Undefined(Exception):
    """A computation with no value (x/0, a huge power)."""


class _Parser:
    """Recursive descent over a token slice: + - (left), * / and implicit products, ^ (right), unary +-."""

    def __init__(self, toks: list[_Tok], pct: bool):
        self.toks, self.i, self.pct, self.ops = toks, 0, pct, 0

    def peek(self) -> Optional[_Tok]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expr(self):
        v = self.term()
        while (t := self.peek()) is not None and t.kind == OP and t.text in "+-":
            self.i += 1
            w = self.term()
            self.ops += 1
            v = _check(v + w if t.text == "+" else v - w)
        return v

    def term(self):
        v = self.unary()
        while (t := self.peek()) is not None and ((t.kind == OP and t.text in "*/") or t.kind == LP):
            if t.kind == OP:
                self.i += 1
            w = self.unary()
            self.ops += 1
            if t.kind == OP and t.text == "/":
                if w == 0:
                    raise _Undefined
                v = _check(v / w)
            else:
                v = _check(v * w)
        return v

    def unary(self):
        t = self.peek()
        if t is not None and t.kind == OP and t.text in "+-":
            self.i += 1
            v = self.unary()
            return -v if t.text == "-" else v
        return self.power()

    def power(self):
        base = self.atom()
        t = self.peek()
        if t is not None and t.kind == OP and t.text == "^":
            self.i += 1
            e = self.unary()
            self.ops += 1
            return _pow(base, e)
        return base

    def atom(self):
        t = self.peek()
        if t is None:
            raise SyntaxError
        if t.kind == NUM:
            self.i += 1
            if t.frac:
                self.ops += 1          # '48/2' is one number to the parser but a computation
            if t.value is None:
                raise _Undefined
            v = t.value / 100 if (t.pct and self.pct) else t.value
            nxt = self.peek()
            if nxt is not None and nxt.kind == NUM:
                raise SyntaxError      # two numbers side by side are not one expression
            return v
        if t.kind == LP:
            self.i += 1
            v = self.expr()
            close = self.peek()
            if close is None or close.kind != RP:
                raise SyntaxError
            self.i += 1
            return v
        raise SyntaxError


def _check(v):
    if isinstance(v, Fraction) and (v.numerator.bit_length() > _MAX_BITS or v.denominator.bit_length() > _MAX_BITS):
        raise _Undefined
    if isinstance(v, float) and not math.isfinite(v):
        raise _Undefined
    return v


def _pow(base, e):
    if isinstance(e, Fraction) and e.denominator == 1 and abs(e) <= _MAX_EXP:
        if base == 0 and e < 0:
            raise _Undefined
        return _check(Fraction(base) ** int(e))
    try:
        v = float(base) ** float(e)
    except (OverflowError, ZeroDivisionError):
        raise _Undefined from None
    if isinstance(v, complex) or not math.isfinite(v) or abs(v) > 1e60:
        raise _Undefined
    return Fraction(v)


def _parse(toks: list[_Tok], pct: bool):
    """(value, number of operations) of a whole token slice; SyntaxError if it is not one expression,
    _Undefined if it is one without a value."""
    p = _Parser(toks, pct)
    v = p.expr()
    if p.i != len(toks):
        raise SyntaxError
    return v, p.ops


def _parses(toks: list[_Tok]) -> bool:
    try:
        _parse(toks, True)
    except SyntaxError:
        return False
    except _Undefined:
        return True
    return True


_EXPR = (NUM, OP, LP, RP)


def _sides(toks: list[_Tok], e: int) -> tuple[Optional[int], Optional[int]]:
    """Around the '=' at index e: start of the longest expression ending before it, end (exclusive) of the
    longest expression starting after it; None where there is none, or where a side goes on beyond what
    can be read ('p + p/2 + 3 = 69', '25 classmates + his 1 teacher + 1 = 27', '70 = (3/2)x - 5')."""
    lo = e
    while lo > 0 and toks[lo - 1].kind in _EXPR:
        lo -= 1
    start = next((s for s in range(lo, e) if _parses(toks[s:e])), None)
    if start is not None and not _left_complete(toks, start):
        start = None
    hi = e + 1
    while hi < len(toks) and toks[hi].kind in _EXPR:
        hi += 1
    end = next((s for s in range(hi, e + 1, -1) if _parses(toks[e + 1:s])), None)
    if end is not None and end < len(toks) and (_is_variable(toks[end]) or (
            toks[end].kind == OP and end + 1 < len(toks) and toks[end + 1].kind in (WORD, LP)
            and toks[end + 1].text.lower() not in _NOT_UNITS)):
        end = None         # '= 30 + M trees', '= (3/4)*number of novels': a side that goes on in words;
        #                    a dangling '= 25 +' or '= 25 - so' is still checked
    return start, end


def _is_variable(tok: _Tok) -> bool:
    """'x', 'M', 'x2': a name in an algebraic expression (and '7:50', a clock time); not 'a' or 'I'."""
    return tok.kind == WORD and ((len(tok.text) == 1 and tok.text not in "aAI")
                                 or any(ch.isdigit() for ch in tok.text))


def _left_complete(toks: list[_Tok], start: int) -> bool:
    """Is toks[start:] the whole left side, not the end of a longer one that cannot be read?"""
    j = start - 1
    if toks[start].kind == OP and j >= 0 and toks[j].kind in (WORD, NUM, RP):
        return False                       # 'x + 7 =': a binary operator whose left operand is unreadable
    while j >= 0 and toks[j].kind == LP:   # '(12 + 7 = 20)' is whole; '$100+($100*(10/100) =' is not
        j -= 1
    if j >= 0 and (toks[j].kind == OP or _is_variable(toks[j])):
        return False                       # 'X*11/4 + 10 =' without the X: '2x + 3' is algebra
    # a number or ')' just before is not part of it ('1) 5 + 3 = 8', 'Step 2 5 + 3 = 8')
    words = 0                              # '+ his 1 teacher + 1 =': an operator a few words back
    while j >= 0 and toks[j].kind == WORD and toks[j].text.isalpha() and words < _UNIT_WORDS - 1:
        j, words = j - 1, words + 1
    return not (words and j >= 0 and toks[j].kind == OP)


def _close(a, b: Fraction, ulp: Fraction, exact: bool) -> bool:
    """Is computed value a what a number written as b (to ulp) claims?"""
    a = Fraction(a)
    if a == b:
        return True
    tol = Fraction(1, 10 ** 12) * max(1, abs(b))       # float powers (2^0.5); everything else is exact
    if abs(a - b) <= tol:
        return True
    if exact or ulp == 0:
        return False
    if abs(a - b) * 2 <= ulp:                           # rounded to the written decimals
        return True
    trunc = Fraction(math.floor(abs(a) / ulp)) * ulp
    return (trunc if a >= 0 else -trunc) == b          # or truncated to them


def _equal(left: list[_Tok], right: list[_Tok], nxt_right: list[_Tok], exact: bool) -> bool:
    """Do the two sides agree under one reading of '%'? nxt_right: right's first number when the chain
    continues after it (a running computation)."""
    readings = (True, False) if any(t.pct for t in left + right + nxt_right) else (True,)
    for pct in readings:
        try:
            lv, lops = _parse(left, pct)
            rv, rops = _parse(right, pct)
        except _Undefined:
            return False
        if rops == 0:       # a written number on the right: its decimals say how it was rounded
            r = right[-1] if right[-1].kind == NUM else None
            ulp = (r.ulp / 100 if (r is not None and r.pct and pct) else r.ulp) if r is not None else Fraction(0)
            if _close(lv, Fraction(rv), ulp, exact):
                return True
        elif lops == 0:
            l_ = left[-1] if left[-1].kind == NUM else None
            ulp = (l_.ulp / 100 if (l_ is not None and l_.pct and pct) else l_.ulp) if l_ is not None else Fraction(0)
            if _close(rv, Fraction(lv), ulp, exact):
                return True
        elif _close(lv, Fraction(rv), Fraction(0), True):
            return True
        if nxt_right:
            try:
                fv, _ = _parse(nxt_right, pct)
            except (_Undefined, SyntaxError):
                continue
            f = nxt_right[-1]
            ulp = f.ulp / 100 if (f.pct and pct) else f.ulp
            if _close(lv, Fraction(fv), ulp, exact):
                return True
    return False


def line_equations_true(line: str, exact: bool = False) -> bool:
    """Every equation of one line (see the module doc) is true."""
    toks = tokens(line)
    eqs = [i for i, t in enumerate(toks) if t.kind == EQ]
    for e in eqs:
        start, end = _sides(toks, e)
        if start is None or end is None:
            continue
        left, right = toks[start:e], toks[e + 1:end]
        lops, rops = _ops(left), _ops(right)
        chained = start > 0 and toks[start - 1].kind == EQ
        if lops == 0 and rops == 0:
            if not chained:
                continue        # '1 dozen = 12': a plain number on both sides is checked only inside a chain
            lu, ru = left[-1].unit, right[-1].unit
            if lu and ru and lu != ru:
                continue        # '12 * 1 = 12 inches = 1 foot': a unit conversion inside a chain
        elif lops == 0 and not chained:
            before = toks[start - 1] if start > 0 else None
            if left[-1].unit or (before is not None and before.kind == WORD):
                continue        # '2 hours = 2 * 60 minutes': a unit conversion
        # a running chain: '5 + 3 = 8 + 2 = 10' (the next link checks '8 + 2 = 10')
        first = []
        if rops and end < len(toks) and toks[end].kind == EQ:
            k = 0
            if right[0].kind == OP and right[0].text in "+-" and len(right) > 1:
                k = 1
            if right[k].kind == NUM:
                first = right[:k + 1]
        if not _equal(left, right, first, exact):
            return False
    return True


def _ops(toks: list[_Tok]) -> int:
    try:
        return _parse(toks, True)[1]
    except _Undefined:
        return 1
    except SyntaxError:
        return 0


def join_continuations(text: str) -> str:
    """Join a line ending in an operator or '=' with the next, and a line starting with one with the last."""
    for pat in _JOIN:
        text = pat.sub(" ", text)
    return text


def equations_true(text: str, exact: bool = False) -> bool:
    """Every equation in `text` is true (lines checked one by one, continuation lines joined); a text
    without equations passes. exact: no rounding allowed (arith's integer steps). Never raises on odd text:
    what it cannot read as arithmetic holds no equation, except brackets nested deeper than the parser's
    recursion allows (false: a computation it cannot evaluate)."""
    if "=" not in text and "equals" not in text.lower():
        return True
    for line in join_continuations(text.replace("\r\n", "\n")).split("\n"):
        if ("=" in line or "equals" in line.lower()) and not _safe_line(line, exact):
            return False
    return True


def _safe_line(line: str, exact: bool) -> bool:
    try:
        return line_equations_true(line, exact)
    except RecursionError:     # thousands of nested parentheses: unreadable, so it claims nothing checkable
        return False


__all__ = ["equations_true", "line_equations_true", "tokens"]
