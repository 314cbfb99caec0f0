"""Arithmetic steps an answer writes out (``3 + 4 = 7``), checked: is a graded-correct answer also derived correctly?

A hinted teacher that is told the answer can write wrong steps and then the right number ("... add 1 ... which is
11. So, the final answer is 30."): it passes the grader, but training on it teaches the student to state answers
it cannot derive. On arithmetic tasks every ``a op b = c`` in the text can be checked, so preparation reports how
many kept answers contain a wrong one, per hint format. Only plain numbers and + - * / (and their ×, ÷, \\times,
\\cdot, \\div spellings) are read; anything else is not counted as a step.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass

_NUMBER = r"-?\d+(?:\.\d+)?"
_OPERATOR = r"[-+*/]"
# A chain of numbers joined by operators, then '=', then a number: "3 + 4 * 2 = 11".
# A step is written on one line: spaces and tabs only, so "5\n- 1 = 4" (a list item after a number) is not one.
_STEP = re.compile(rf"(?<![\w.])({_NUMBER}(?:[ \t]*{_OPERATOR}[ \t]*{_NUMBER})+)[ \t]*=[ \t]*({_NUMBER})(?![\w]|\.\d)")
_SPELLINGS = (
    (re.compile(r"\\times|\\cdot|×|·|(?<=\d)\s*[xX]\s*(?=\d)"), " * "),
    (re.compile(r"\\div|÷"), " / "),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # 1,000 -> 1000
    (re.compile(r"\\[()\[\]]|\$"), " "),  # LaTeX math delimiters
)
_OPERATIONS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class StepCheck:
    """The written steps of one answer: how many could be checked, and the wrong ones as written."""

    checked: int
    wrong: tuple[str, ...]

    @property
    def has_wrong_step(self) -> bool:
        return bool(self.wrong)


def _evaluate(expression: str) -> float | None:
    """The value of a chain of numbers and + - * / (usual precedence); None when it has none (division by zero,
    overflow, or text the regular expression let through that is not arithmetic)."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATIONS:
            return _OPERATIONS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return value(ast.parse(expression, mode="eval").body)
    except (ZeroDivisionError, OverflowError, SyntaxError, ValueError):  # not a step that can be checked
        return None


def _agrees(computed: float, written: str) -> bool:
    """The written result equals the computed one, rounded to the decimals it was written with."""
    decimals = len(written.split(".")[1]) if "." in written else 0
    tolerance = 0.5 * 10.0**-decimals if decimals else 1e-9 * max(1.0, abs(computed))
    return abs(computed - float(written)) <= tolerance + 1e-12


def check_arithmetic_steps(text: str) -> StepCheck:
    """Find every ``a op b [op c ...] = d`` in ``text`` and check it."""
    for pattern, replacement in _SPELLINGS:
        text = pattern.sub(replacement, text)
    checked, wrong = 0, []
    for match in _STEP.finditer(text):
        computed = _evaluate(match.group(1))
        if computed is None:
            continue
        checked += 1
        if not _agrees(computed, match.group(2)):
            wrong.append(" ".join(match.group(0).split()))
    return StepCheck(checked, tuple(wrong))
