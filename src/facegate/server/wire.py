"""AWS JSON 1.1 on the wire: the response body every endpoint (Rekognition, admin, health) sends, and the
one shape of every error. (What a Rekognition operation's body holds is ``facegate/wire.py``'s.)"""

from __future__ import annotations

import json
import math
import re

from starlette.responses import JSONResponse, Response

from facegate.errors import FacegateError, SerializationException

AMZ_JSON = "application/x-amz-json-1.1"
_SURROGATE = re.compile("[\ud800-\udfff]")


class AwsJson(JSONResponse):
    """AWS JSON 1.1. Non-ASCII is escaped, so no text (an echoed input included) can fail to encode."""

    media_type = AMZ_JSON

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def aws_json(content: dict, status: int = 200) -> Response:
    return AwsJson(content, status_code=status)


def error_response(error: FacegateError, status: int | None = None) -> Response:
    """Every error in AWS's shape: ``__type`` and ``Message`` in the body, ``x-amzn-ErrorType`` in the headers."""
    return AwsJson(error.to_wire(), status_code=status or error.status, headers={"x-amzn-ErrorType": error.code})


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(body: bytes) -> dict:
    """A request body as a JSON object; anything else (NaN, Infinity, out-of-range numbers, lone surrogates
    included) is a SerializationException naming the problem."""
    if not body.strip():
        return {}
    try:
        params = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise SerializationException(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(params, dict):
        raise SerializationException(f"The request body must be a JSON object, not {type(params).__name__}.")
    _check_unicode(params, "")
    return params


def _check_unicode(value: object, path: str) -> None:
    """Lone UTF-16 surrogates (``\\ud800``) are valid JSON escapes but not Unicode text: refuse them here,
    before they reach a message, a store lookup or the audit log."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise SerializationException(
                f"The value at '{path or '(body)'}' contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                "which is not valid Unicode: send UTF-8 text."
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, path)
            _check_unicode(item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{path}[{i}]")
