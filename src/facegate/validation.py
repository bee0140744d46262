"""Check a decoded Rekognition request against botocore's service model, the way AWS's front door does.

``validate_request("IndexFaces", params)`` walks the operation's input shape, collects every violation
(missing required members, unknown members, wrong JSON types, length/range/pattern/enum constraints) and
raises one ``ValidationException`` whose message reads like AWS's::

    2 validation errors detected: Value 'a b' at 'collectionId' failed to satisfy constraint: Member must
    satisfy regular expression pattern: [a-zA-Z0-9_.\\-]+; Value '0' at 'maxFaces' failed to satisfy
    constraint: Member must have value greater than or equal to 1

On success it returns a normalised copy: blob members (``Image.Bytes``) are ``bytes``, float members are
``float``, and members sent as JSON ``null`` are dropped.

The model's patterns are Java regexes. Python's ``re`` accepts them once a few differences are bridged
(see ``_translate_pattern``): ``\\p{L}``-style Unicode categories, Java's ASCII-only ``\\d``/``\\w``/``\\s``
and Java's ``.``, which also stops at ``\\r``, ``\\x85``, ``\\u2028`` and ``\\u2029``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
import sys
import unicodedata
from typing import Any

from facegate.errors import ImageTooLargeException, ValidationException

_SHOW_LIMIT = 64  # characters of a value echoed back in a message
_MAX_REPORTED = 100  # violations spelled out in one message; the count still covers all of them
# A pattern on a string shape without a ``max`` is not run on values longer than this: every such shape in
# the model is an ID or ARN, and some of their patterns (``.*:\w{12}:.+$``) backtrack quadratically.
_UNBOUNDED_PATTERN_LIMIT = 4096

_INT_BITS = {"integer": 32, "long": 64}
_EXPECTED = {
    "structure": "object",
    "map": "object",
    "list": "array",
    "string": "string",
    "integer": "integer",
    "long": "integer",
    "float": "number",
    "double": "number",
    "boolean": "boolean",
    "blob": "base64-encoded string",
    "timestamp": "number (epoch seconds)",
}
_HIDDEN = object()  # stands for a value that must not be echoed (blobs, sensitive strings)


@functools.cache
def _model() -> dict[str, Any]:
    from botocore.loaders import Loader

    return Loader().load_service_model("rekognition", "service-2")


def operation_names() -> frozenset[str]:
    """Every operation name in botocore's Rekognition model (``IndexFaces``, ``CreateCollection``, ...)."""
    return frozenset(_model()["operations"])


def validate_request(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` (a decoded JSON body) against ``operation``'s input shape; return a normalised copy.

    Raises ``ValidationException`` naming every violation, or naming the operation if the model lacks it.
    """
    op = _model()["operations"].get(operation)
    if op is None:
        raise ValidationException(f"Operation {operation} is not part of the Rekognition API")
    if not isinstance(params, dict):
        received = _json_type(params)
        raise ValidationException(
            f"1 validation error detected: The request body must be a JSON object (received {received})"
        )
    checker = _Checker(_model()["shapes"])
    if "input" in op:
        result = checker.structure(checker.shapes[op["input"]["shape"]], params, "")
    else:
        for key in params:
            checker.unexpected(key, "", [])
        result = {}
    checker.raise_if_any()
    return result


class _Checker:
    """One pass over a request: records violations, builds the normalised copy."""

    def __init__(self, shapes: dict[str, Any]) -> None:
        self.shapes = shapes
        self.count = 0
        self.messages: list[str] = []

    # -- reporting -------------------------------------------------------------------------------------

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < _MAX_REPORTED:
            self.messages.append(message)

    def violation(self, path: str, value: Any, constraint: str) -> None:
        if value is _HIDDEN:
            subject = f"Value at '{path}'"
        elif value is None:
            subject = f"Value null at '{path}'"
        else:
            subject = f"Value {_show(value)} at '{path}'"
        self.add(f"{subject} failed to satisfy constraint: {constraint}")

    def wrong_type(self, path: str, value: Any, shape: dict[str, Any], hidden: bool = False) -> None:
        expected = _EXPECTED.get(shape["type"], shape["type"])
        constraint = f"Member must be of type {expected} (received {_json_type(value)})"
        self.violation(path, _HIDDEN if hidden else value, constraint)

    def unexpected(self, key: Any, path: str, accepted: list[str]) -> None:
        where = f" at '{path}'" if path else ""
        name = _show(key) if isinstance(key, str) else f"{key!r}"[:_SHOW_LIMIT]
        allowed = f"accepted members are {', '.join(accepted)}" if accepted else "no members are accepted"
        self.add(f"Unexpected member {name}{where}: {allowed}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        noun = "validation error" if self.count == 1 else "validation errors"
        text = "; ".join(self.messages)
        if self.count > len(self.messages):
            text += f"; and {self.count - len(self.messages)} more"
        raise ValidationException(f"{self.count} {noun} detected: {text}")

    # -- walking ---------------------------------------------------------------------------------------

    def check(self, shape_name: str, value: Any, path: str) -> Any:
        shape = self.shapes[shape_name]
        kind = shape["type"]
        if kind == "structure":
            return self.structure(shape, value, path)
        if kind == "list":
            return self.sequence(shape, value, path)
        if kind == "map":
            return self.mapping(shape, value, path)
        if kind == "string":
            return self.string(shape, value, path)
        if kind in _INT_BITS:
            return self.integer(shape, value, path)
        if kind in ("float", "double"):
            return self.number(shape, value, path)
        if kind == "boolean":
            if not isinstance(value, bool):
                self.wrong_type(path, value, shape)
            return value
        if kind == "blob":
            return self.blob(shape, value, path)
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.wrong_type(path, value, shape)
            return value
        return value  # a shape type this module does not know (e.g. "document"): accepted as sent

    def structure(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.wrong_type(path, value, shape)
            return value
        members: dict[str, Any] = shape.get("members", {})
        required = set(shape.get("required", ()))
        out: dict[str, Any] = {}
        for name, ref in members.items():
            sub = _join(path, name)
            item = value.get(name)
            if item is None:
                if name in required:
                    self.violation(sub, None, "Member must not be null")
                continue
            out[name] = self.check(ref["shape"], item, sub)
        for key in value:
            if key not in members:
                self.unexpected(key, path, list(members))
        return out

    def sequence(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if not isinstance(value, list):
            self.wrong_type(path, value, shape)
            return value
        for problem in _length_problems(shape, len(value)):
            self.violation(path, value, problem)
        member = shape["member"]["shape"]
        out = []
        for index, item in enumerate(value, 1):
            sub = f"{path}.{index}"
            if item is None:
                self.violation(sub, None, "Member must not be null")
                out.append(item)
            else:
                out.append(self.check(member, item, sub))
        return out

    def mapping(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.wrong_type(path, value, shape)
            return value
        for problem in _length_problems(shape, len(value)):
            self.violation(path, value, problem)
        key_shape = self.shapes[shape["key"]["shape"]]
        value_name = shape["value"]["shape"]
        value_is_string = self.shapes[value_name]["type"] == "string"
        # AWS folds every key (and scalar value) problem into one violation on the map itself.
        key_problems: dict[str, None] = {}
        value_problems: dict[str, None] = {}
        out: dict[Any, Any] = {}
        for key, item in value.items():
            sub = f"{path}.{key}"
            if not isinstance(key, str):
                self.add(f"Key {key!r} at '{path}' must be a string (received {_json_type(key)})")
            else:
                key_problems.update(dict.fromkeys(_string_problems(key_shape, key)))
            if item is None:
                self.violation(sub, None, "Member must not be null")
                out[key] = item
            elif value_is_string and isinstance(item, str):
                value_problems.update(dict.fromkeys(_string_problems(self.shapes[value_name], item)))
                out[key] = item
            else:
                out[key] = self.check(value_name, item, sub)
        if key_problems:
            self.violation(path, value, f"Map keys must satisfy constraint: [{', '.join(key_problems)}]")
        if value_problems:
            self.violation(path, value, f"Map value must satisfy constraint: [{', '.join(value_problems)}]")
        return out

    def string(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        hidden = bool(shape.get("sensitive"))
        if not isinstance(value, str):
            self.wrong_type(path, value, shape, hidden)
            return value
        for problem in _string_problems(shape, value):
            self.violation(path, _HIDDEN if hidden else value, problem)
        return value

    def integer(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, value, shape)
            return value
        bits = _INT_BITS[shape["type"]]
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            self.violation(path, value, f"Member must be a {bits}-bit integer")
            return value
        for problem in _range_problems(shape, value):
            self.violation(path, value, problem)
        return value

    def number(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, value, shape)
            return value
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.violation(path, value, "Member must be a finite number")
            return value
        for problem in _range_problems(shape, number):
            self.violation(path, value, problem)
        return number

    def blob(self, shape: dict[str, Any], value: Any, path: str) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        elif isinstance(value, str):
            # A valid encoding of more than ``max`` bytes needs at least this many characters: say so
            # without decoding (or judging the encoding of) megabytes that would be refused anyway.
            if "max" in shape and len(value) // 4 * 3 - 2 > shape["max"]:
                _image_too_large(path, len(value) // 4 * 3 - 2, shape["max"], at_least=True)
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
                self.violation(path, _HIDDEN, "Member must be a valid base64-encoded string")
                return value
        else:
            self.wrong_type(path, value, shape, hidden=True)
            return value
        if "max" in shape and len(data) > shape["max"]:
            _image_too_large(path, len(data), shape["max"])
        for problem in _length_problems({k: v for k, v in shape.items() if k != "max"}, len(data)):
            self.violation(path, _HIDDEN, problem)
        return data


def _image_too_large(path: str, size: int, limit: int, at_least: bool = False) -> None:
    # Rekognition answers an over-limit image with ImageTooLargeException, not a generic validation error.
    raise ImageTooLargeException(
        f"The image at '{path}' is {'at least ' if at_least else ''}{size:,} bytes; the limit is {limit:,} bytes."
    )


# -- constraints ---------------------------------------------------------------------------------------


def _length_problems(shape: dict[str, Any], length: int) -> list[str]:
    problems = []
    if "min" in shape and length < shape["min"]:
        problems.append(f"Member must have length greater than or equal to {shape['min']}")
    if "max" in shape and length > shape["max"]:
        problems.append(f"Member must have length less than or equal to {shape['max']}")
    return problems


def _range_problems(shape: dict[str, Any], value: float) -> list[str]:
    problems = []
    if "min" in shape and value < shape["min"]:
        problems.append(f"Member must have value greater than or equal to {shape['min']}")
    if "max" in shape and value > shape["max"]:
        problems.append(f"Member must have value less than or equal to {shape['max']}")
    return problems


def _string_problems(shape: dict[str, Any], value: str) -> list[str]:
    """Length (in code points), pattern and enum problems of a string, in AWS's order."""
    problems = _length_problems(shape, len(value))
    pattern = shape.get("pattern")
    if pattern is not None:
        if len(value) > shape.get("max", _UNBOUNDED_PATTERN_LIMIT):
            if "max" not in shape:  # with a max, the length problem above already refuses it
                problems.append(f"Member must satisfy regular expression pattern: {pattern}")
        elif _compile_pattern(pattern).fullmatch(value) is None:
            problems.append(f"Member must satisfy regular expression pattern: {pattern}")
    enum = shape.get("enum")
    if enum is not None and value not in enum:
        problems.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
    return problems


# -- Java regexes in Python ----------------------------------------------------------------------------

# Java's ``.`` stops at every line terminator, not just ``\n``.
_JAVA_DOT = "[^\\n\\r\\x85\\u2028\\u2029]"
_CATEGORY = re.compile(r"\{(\w+)\}|([A-Z])")


@functools.cache
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile one of the model's Java regexes so that ``fullmatch`` behaves like Java's ``matches()``.

    ``re.ASCII`` gives ``\\d``, ``\\w``, ``\\s`` and ``\\b`` Java's default ASCII meaning.
    """
    return re.compile(_translate_pattern(pattern), re.ASCII)


def _translate_pattern(pattern: str) -> str:
    """Rewrite the Java-only parts of ``pattern``: ``\\p{..}``/``\\P{..}`` general categories and ``.``."""
    out: list[str] = []
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escape = pattern[i + 1]
            if escape in "pP":
                found = _CATEGORY.match(pattern, i + 2)
                if found is None:
                    raise ValueError(f"Malformed \\{escape} in pattern {pattern!r}")
                ranges = _category_ranges(found.group(1) or found.group(2))
                if escape == "P":
                    if in_class:
                        raise ValueError(f"\\P inside a character class is not supported: {pattern!r}")
                    out.append(f"[^{ranges}]")
                else:
                    out.append(ranges if in_class else f"[{ranges}]")
                i = found.end()
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append(char)
            i += 1
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):  # a leading ']' is a literal in both dialects
                out.append("\\]")
                i += 1
        elif char == ".":
            out.append(_JAVA_DOT)
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


@functools.cache
def _category_runs() -> tuple[tuple[str, int, int], ...]:
    """Runs of consecutive code points sharing a Unicode general category: (category, first, last)."""
    runs: list[tuple[str, int, int]] = []
    start, current = 0, unicodedata.category("\0")
    for code in range(1, sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category != current:
            runs.append((current, start, code - 1))
            start, current = code, category
    runs.append((current, start, sys.maxunicode))
    return tuple(runs)


@functools.cache
def _category_ranges(name: str) -> str:
    """Character-class body (no brackets) matching Java's ``\\p{name}``: ``L`` covers ``Lu``, ``Ll``, ..."""
    if not (len(name) in (1, 2) and name.isalpha()):
        raise ValueError(f"Unsupported Unicode property \\p{{{name}}}")
    merged: list[list[int]] = []
    for category, first, last in _category_runs():
        if category == name or (len(name) == 1 and category[0] == name):
            if merged and merged[-1][1] == first - 1:
                merged[-1][1] = last
            else:
                merged.append([first, last])
    if not merged:
        raise ValueError(f"Unknown Unicode general category \\p{{{name}}}")
    return "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in merged)


def _class_char(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


# -- rendering -----------------------------------------------------------------------------------------


def _join(path: str, member: str) -> str:
    name = member[:1].lower() + member[1:]
    return f"{path}.{name}" if path else name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    return type(value).__name__


def _show(value: Any) -> str:
    """``'value'`` as AWS (Java) prints it, cut to ``_SHOW_LIMIT`` characters."""
    text = _render(value, _SHOW_LIMIT + 1)
    if len(text) > _SHOW_LIMIT:
        text = text[:_SHOW_LIMIT] + "..."
    return f"'{text}'"


def _render(value: Any, budget: int, nested: bool = False) -> str:
    """Java-style text of ``value``; stops early once ``budget`` characters are reached."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value[:budget]
    if isinstance(value, int | float):
        return repr(value)[:budget]
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple | dict):
        if nested:  # one level only: never walk a big document to print a 64-character excerpt
            return "{...}" if isinstance(value, dict) else "[...]"
        is_map = isinstance(value, dict)
        items = value.items() if is_map else ((None, item) for item in value)
        text = "{" if is_map else "["
        for index, (key, item) in enumerate(items):
            if len(text) > budget:
                break
            if index:
                text += ", "
            if is_map:
                text += _render(key, budget, True) + "="
            text += _render(item, budget, True)
        return text + ("}" if is_map else "]")
    return type(value).__name__
