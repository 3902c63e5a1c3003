"""CEL as Inngest evaluates it, on a real CEL implementation (cel-python).

Inngest wraps cel-go (`pkg/expressions/expressions.go`, `pkg/expressions/unknown.go`); where its
wrapper changes what plain CEL would answer, this module does the same:

* Event data is decoded JSON, so every number is a double (`pkg/event/event.go`, `Event.Map`:
  "we cast to float64 ... JS has no notion of ints"). Comparing a double with an int literal
  coerces, as the wrapper's "int <> float comparisons" do.
* A missing attribute is unknown, and unknowns are read as null ("handles unknowns similarly
  to null values"): `async.data.missing != "x"` is true, `== "x"` false. `has()` still tells a
  missing key from a present one.
* `string(double)` and key rendering follow Go's formatting: `1234567` becomes
  `"1.234567e+06"` (`strconv.FormatFloat(f, 'g', -1, 64)`, and `fmt.Sprintf("%v")` for keys).

Known gaps, kept loud rather than guessed: the wrapper's JavaScript-like truthiness for `&&`/`||`
on non-booleans and its `string + number` concatenation are not reproduced (plain CEL errors).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from typing import Any, cast

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, Evaluator, base_functions

# `consts.PriorityFactorMin/Max` (pkg/consts/consts.go): twelve hours, in seconds.
PRIORITY_FACTOR_MAX = 12 * 60 * 60
INVALID_DEBOUNCE_KEY = "<invalid>"  # pkg/execution/debounce/debounce.go, debounceKey


def go_float(value: float) -> str:
    """Go's shortest `%v`/`%g` of a float64: the exponent form when the decimal exponent is
    below -4 or at least 6 (strconv's `eprec = 6` for the shortest form): 1e+06, 1.234567e+06,
    100000, 0.5, 1e-05."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(digits) + int(exponent)  # digits before the decimal point
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + text
    elif point >= len(text):
        out = text + "0" * (point - len(text))
    else:
        out = text[:point] + "." + text[point:]
    return ("-" if sign else "") + out


def to_cel(value: Any) -> Any:
    """Decoded JSON as Inngest holds it: numbers are doubles."""
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if value is None:
        return None
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([to_cel(v) for v in value])
    return celpy.json_to_cel(value)


def from_cel(value: Any) -> Any:
    if isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.MapType):
        return {from_cel(k): from_cel(v) for k, v in value.items()}
    if isinstance(value, celtypes.ListType):
        return [from_cel(v) for v in value]
    return value


# --- the wrapper's coercions, as CEL function overrides -------------------------------------

_NUMBER = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _null(value: Any) -> bool:
    return value is None or isinstance(value, celtypes.NullType)


def _numeric(name: str) -> Any:
    base = base_functions[name]

    def compare(left: Any, right: Any) -> Any:
        if isinstance(left, _NUMBER) and isinstance(right, _NUMBER) and type(left) is not type(right):
            return base(celtypes.DoubleType(float(left)), celtypes.DoubleType(float(right)))
        if name in ("_==_", "_!=_") and (_null(left) or _null(right)):
            return celtypes.BoolType((_null(left) and _null(right)) == (name == "_==_"))  # null equals only null
        return base(left, right)

    return compare


_OVERRIDES: dict[str, Any] = {op: _numeric(op) for op in ("_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_")}


class _NullForMissing(Evaluator):
    """Reads `x.missing` (and `null.anything`) as null, except inside `has()`; renders
    `string(double)` as cel-go does (`strconv.FormatFloat(d, 'g', -1, 64)`)."""

    def function_eval(self, name_token: lark.Token, exprlist: Any = None) -> Any:
        values = list(exprlist or [])
        if name_token.value == "string" and len(values) == 1 and isinstance(values[0], celtypes.DoubleType):
            return celtypes.StringType(go_float(float(values[0])))
        return super().function_eval(name_token, values)

    _in_has = 0

    def macro_has_eval(self, exprlist: lark.Tree) -> celtypes.BoolType:
        self._in_has += 1
        try:
            return super().macro_has_eval(exprlist)
        finally:
            self._in_has -= 1

    def member_dot(self, tree: lark.Tree) -> Any:
        if not self._in_has:
            member = self.visit(cast(lark.Tree, tree.children[0]))
            name = celtypes.StringType(cast(lark.Token, tree.children[1]).value)
            if _null(member) or (isinstance(member, celtypes.MapType) and name not in member):
                return celtypes.NullType()
        return super().member_dot(tree)


class _Runner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _NullForMissing(ast=self.ast, activation=self.new_activation()).evaluate(context)


_CEL = celpy.Environment(runner_class=_Runner)


def cel_evaluate(expr: str, **variables: Any) -> Any:
    """Evaluate a CEL expression with JSON ``variables`` (e.g. ``event=...``) bound, as the
    engine does for priority, keys and wait matches. Returns the Python value (numbers from
    event data come back as floats); raises ``celpy.CELParseError`` for text that is not CEL and
    ``celpy.CELEvalError`` when evaluation fails (a type mismatch)."""
    program = _CEL.program(_CEL.compile(expr), functions=_OVERRIDES)
    result = program.evaluate({name: to_cel(value) for name, value in variables.items()})
    if isinstance(result, CELEvalError):
        raise result
    return from_cel(result)


def cel_compiles(expr: str) -> str | None:
    """None when ``expr`` parses as CEL; else the parser's complaint (a registration check)."""
    try:
        _CEL.compile(expr)
    except celpy.CELParseError as error:
        return str(error).splitlines()[0]
    return None


def cel_match(expr: str | None, *, candidate: Mapping[str, Any], trigger: Mapping[str, Any]) -> bool:
    """Inngest's ``waitForEvent`` match: ``async`` is the candidate event, ``event`` the run's
    trigger. An empty expression matches; an evaluation error is no match, as in the engine.
    Text that does not parse raises: the engine would refuse the wait, and a test should say so."""
    if not expr or not expr.strip():
        return True
    try:
        return cel_evaluate(expr, event=dict(trigger), **{"async": dict(candidate)}) is True
    except CELEvalError:
        return False
    except Exception as error:  # celpy's parse errors come from lark
        if isinstance(error, celpy.CELParseError):
            raise ValueError(f"not a CEL expression: {expr!r}: {error}") from error
        raise


def go_value(value: Any) -> str:
    """`fmt.Sprintf("%v", value)` for a decoded value: how Go renders a non-string key."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def evaluated_key(expr: str, event: Mapping[str, Any], *, on_error: str) -> str:
    """A key expression evaluated against the run's event: a string as is, anything else as Go
    prints it, and ``on_error`` when evaluation fails (`"<nil>"` for concurrency and throttle
    keys, whose evaluator drops the error and prints the nil value; `"<invalid>"` for debounce)."""
    try:
        value = cel_evaluate(expr, event=dict(event))
    except CELEvalError:
        return on_error
    return value if isinstance(value, str) else go_value(value)


def priority_factor(expr: str | None, event: Mapping[str, Any]) -> int:
    """`Function.RunPriorityFactor` (pkg/inngest/function.go): an int result clamped to
    +-12 h in seconds; an error or a non-int (a double from event data included) gives 0."""
    if not expr:
        return 0
    try:
        value = cel_evaluate(expr, event=dict(event))
    except CELEvalError:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(-PRIORITY_FACTOR_MAX, min(PRIORITY_FACTOR_MAX, value))
