"""The math tasks' one number parser (tasks/answers.py) on the forms models write.

The issue-14 examples come first: each gave the wrong number on the parser they replaced.
"""
from __future__ import annotations

import pytest

from sitf_ray.tasks import arith, gsm8k, mmlu_math
from sitf_ray.tasks.answers import extract_final_number, normalize_number, numbers_equal


# ------------------------------------------------------------------------------- issue 14 examples
@pytest.mark.parametrize("task", [gsm8k, mmlu_math])
def test_latex_thousands_separator(task):
    assert task.extract_answer("The answer is $9{,}500.") == "9500"          # was 9
    assert task.is_correct({"answer": "9500"}, "The answer is $9{,}500.")
    assert not task.is_correct({"answer": "9"}, "The answer is $9{,}500.")


@pytest.mark.parametrize("task", [gsm8k, mmlu_math])
def test_unicode_minus_is_a_sign(task):
    assert task.extract_answer("The answer is \u22123.") == "-3"              # was 3
    assert not task.is_correct({"answer": "3"}, "The answer is \u22123.")    # was a false positive
    assert task.is_correct({"answer": "-3"}, "The answer is \u22123.")


@pytest.mark.parametrize("task", [gsm8k, mmlu_math])
def test_latex_fraction(task):
    assert task.extract_answer(r"The answer is \frac{3}{4}") == "0.75"       # was 3
    assert task.is_correct({"answer": "0.75"}, r"The answer is $\frac{3}{4}$.")
    assert not task.is_correct({"answer": "3"}, r"The answer is $\frac{3}{4}$.")


# --------------------------------------------------------------------------------- the table
# (text, canonical answer): separators, signs, fractions, mixed numbers, boxed, delimiters, units,
# percentages, trailing punctuation, and where in the text the answer is taken from.
TABLE = [
    # separators of every kind
    ("The answer is 1,234,567.", "1234567"),
    ("The answer is $9{,}500.", "9500"),
    (r"The answer is $9\,500$.", "9500"),
    ("The answer is 9\u2009500.", "9500"),           # thin space
    ("The answer is 9\u202f500.", "9500"),           # narrow no-break space
    ("The answer is 9\u00a0500.", "9500"),           # no-break space
    ("The answer is 1 000 000", "1000000"),
    ("The answer is 1'000", "1000"),
    ("The answer is 1,000.50", "1000.5"),
    ("The answers are 1,2,3", "3"),                  # a list, not 123
    # signs
    ("The answer is -7", "-7"),
    ("The answer is \u22127", "-7"),                 # minus sign
    ("The answer is \u20137", "-7"),                 # en dash
    ("The answer is -$3", "-3"),
    ("The answer is $-3$.", "-3"),
    ("so 10-7", "7"),                                # a subtraction, not -7
    ("The answer is +4", "4"),
    # fractions and mixed numbers
    ("The answer is 3/4", "0.75"),
    (r"The answer is \dfrac{3}{4}", "0.75"),
    (r"The answer is \frac34", "0.75"),
    (r"The answer is -\frac{3}{4}", "-0.75"),
    (r"The answer is \frac{-3}{4}", "-0.75"),
    ("The answer is 1/3", "1/3"),
    ("The answer is 2 1/2 cups", "2.5"),
    (r"The answer is 3\frac{1}{2}", "3.5"),
    (r"The answer is 3 \frac{1}{2}", "3.5"),
    ("The answer is 2\u00bd", "2.5"),               # 2½
    ("The answer is \u00be", "0.75"),               # ¾
    ("The answer is 3/0", None),
    # boxed and delimiters
    (r"\boxed{42}", "42"),
    (r"The final answer is $\boxed{1\,000}$.", "1000"),
    (r"First \boxed{3}, no wait: \boxed{\frac{1}{2}}", "0.5"),
    (r"The answer is \(\frac{1}{2}\)", "0.5"),
    (r"The answer is \[ 12 \]", "12"),
    # units, currency, percentages, punctuation
    ("The answer is 18 dollars.", "18"),
    ("The answer is \\$18.", "18"),
    (r"The answer is 5\text{ cm}.", "5"),
    (r"The answer is $90^\circ$", "90"),
    ("The answer is 25%.", "25%"),
    ("The answer is 20\\%", "20%"),
    ("The answer is 12 percent", "12%"),
    ("The answer is 12.", "12"),
    ("The answer is 7.0!", "7"),
    ("The answer is .5", "0.5"),
    ("The answer is 1.5e3", "1500"),
    (r"The answer is $1.5 \times 10^{3}$", "1500"),
    ("The answer is \uff11\uff12", "12"),          # fullwidth digits
    # where the answer is taken from
    ("The answer is: **42**", "42"),
    ("Answer: 17", "17"),
    ("The answer is 5 + 3 = 8", "8"),
    ("The answer is 7 because 2 = 2", "7"),
    ("It costs $5 each.\nThe answer is 40.", "40"),
    ("The answer is 4\nThe answer is 5", "5"),
    ("#### 1,080", "1080"),
    ("5 + 3 = 8 apples", "8"),
    ("no number here", None),
]


@pytest.mark.parametrize("text,expected", TABLE)
def test_extract_final_number_table(text, expected):
    assert extract_final_number(text) == expected
    assert gsm8k.extract_answer(text) == expected == mmlu_math.extract_answer(text)


@pytest.mark.parametrize("a,b,equal", [
    ("9500", "9500", True), ("7", "7.0", True), ("0.75", "3/4", True), ("1/3", "0.3333333", True),
    ("25%", "25", True), ("25%", "0.25", True), ("25%", "0.3", False), ("-3", "3", False),
    ("1234.5", "1234.50", True), ("0.547", "0.548", False), ("1e15", "1000000000000000", True),
    (None, "3", False), ("3", None, False), ("abc", "abc", True),
])
def test_numbers_equal(a, b, equal):
    assert numbers_equal(a, b) is equal


def test_normalize_number_first_number():
    assert normalize_number("$1,234.50 and 7") == "1234.5"
    assert normalize_number("nothing") is None


@pytest.mark.parametrize("text,gold,right", [
    ("Natalia sold 48/2 = 24 clips.\nThe answer is 72", "72", True),
    ("The answer is 72.", "72", True),
    ("The answer is $72.00", "72", True),
    ("The answer is 7 2", "72", False),
    ("The answer is 73", "72", False),
    ("The answer is \u221272", "72", False),
])
def test_gsm8k_is_correct(text, gold, right):
    assert gsm8k.is_correct({"answer": gold}, text) is right


def test_arith_keeps_its_exact_format():
    """arith reads only 'The answer is N' (its step oracle trains on that line) and compares integers."""
    row = {"answer": "28"}
    assert arith.is_correct(row, "14 * 2 = 28\nThe answer is 28")
    assert not arith.is_correct(row, "\\boxed{28}")            # not the format arith teaches
    assert arith.extract_answer("The answer is \u221228") is None
