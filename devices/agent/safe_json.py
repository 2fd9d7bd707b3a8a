"""JSON from the other side of a connection, parsed with limits (standard library only).

``loads`` is ``json.loads`` that refuses, with a message fit for the sender, what the standard
parser lets through or answers with an exception nobody expects: bytes that are not UTF-8,
nesting deeper than ``MAX_DEPTH`` (the standard parser recurses and raises RecursionError,
not ValueError, at about a thousand levels), ``NaN`` and ``Infinity`` (not JSON), numbers that
overflow a float (``1e999`` would become ``inf``), number literals longer than
``MAX_NUMBER_CHARS`` (a 4,300-digit integer costs quadratic time to convert) and strings with
an unpaired surrogate escape (``"\\ud800"``: no database or UTF-8 encoder can store it).

Every place that parses JSON a client sent uses it: the REST API's parser (webapp.lib.api), the
agent's pairing endpoint, the look-up-table import and both sides of the agent's websocket
(devices.agent.protocol). It lives with the agent program because the agent ships only this
folder (devices/agent_files.py) and must parse its server's messages the same way.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting of arrays and objects accepted (every message of ours is 5 levels at most).
MAX_DEPTH = 32
#: Longest number literal accepted (a float's repr takes at most 24 characters).
MAX_NUMBER_CHARS = 100


_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONInputError(ValueError):
    """The text is not JSON this application reads; the message says why, for the sender."""


def _refuse_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number: send finite numbers only")


def _number_literal(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONInputError(f"a number of {len(text)} characters is too long: at most {MAX_NUMBER_CHARS}")


def _parse_int(text: str) -> int:
    _number_literal(text)
    return int(text)


def _parse_float(text: str) -> float:
    _number_literal(text)
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(f"the number {text[:40]} is too large: it overflows a float")
    return value


def _check_tree(value: Any, limit: int) -> None:
    """JSONInputError when ``value`` nests arrays or objects deeper than ``limit`` or holds a
    string with an unpaired surrogate (iterative: checking must not recurse either)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise JSONInputError("a string holds an unpaired surrogate escape (\\ud800-\\udfff): "
                                     "it is not Unicode text")
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            raise JSONInputError(f"arrays and objects are nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of the JSON text ``data`` (bytes are read as UTF-8, a leading BOM skipped), or
    JSONInputError saying what is wrong with it."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise JSONInputError(f"the text is not UTF-8 (invalid byte at position {error.start})") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_int=_parse_int,
                           parse_float=_parse_float)
    except RecursionError:
        raise JSONInputError(f"arrays and objects are nested deeper than {max_depth} levels") from None
    except JSONInputError:
        raise
    except json.JSONDecodeError as error:
        raise JSONInputError(f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    _check_tree(value, max_depth)
    return value
