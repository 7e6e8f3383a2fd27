"""The comment-keeping line editor of ``params.yaml``: a value changes on its own line, every
other byte (comments, alignment, key order, ``0.0``) stays; ruamel's whole-file dump is the
fallback for a layout the editor cannot delimit."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ruamel.yaml import YAML


def safe_yaml() -> YAML:
    # YAML 1.2, as DVC reads params.yaml: 1e-3 is a number (PyYAML's YAML 1.1 says string).
    return YAML(typ="safe", pure=True)


@dataclass(frozen=True)
class _Edit:
    """Lines ``first`` to ``last`` (inclusive; ``last = first - 1`` inserts) become ``lines``."""

    first: int
    last: int
    lines: list[str]


class _CannotEdit(Exception):
    """A value's text the line editor cannot delimit."""


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a key's "value" before it was added or after it was removed
Change = tuple[str, Any, Any]  # dotted key, old and new value (plain Python, or ABSENT)


@dataclass
class _Plan:
    lines: list[str]  # the file's lines, as read
    edits: list[_Edit] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    editable: bool = True  # False: some value's text could not be delimited


def edit_params_text(text: str, wanted: Mapping[str, Any]) -> tuple[str, list[Change]]:
    """``text`` (params.yaml) edited to hold ``wanted``, and the changes.

    Each key whose value differs gets its value's text replaced on its own line (a comment
    after it keeps its column); a block mapping (``select.candidates``) is edited key by key,
    keys added or removed there get or lose their lines. Everything else stays byte for byte.
    A layout this cannot edit (a block scalar, say) is dumped whole by ruamel instead.
    """
    newline = text.endswith("\n")
    plan = _Plan((text if newline or not text else f"{text}\n").splitlines(keepends=True))
    _edit_mapping(_round_trip().load(text), wanted, "", plan)
    if not plan.editable:
        return rewrite(text, wanted), plan.changes
    lines = plan.lines
    for edit in sorted(plan.edits, key=lambda e: e.first, reverse=True):
        lines[edit.first : edit.last + 1] = edit.lines
    edited = "".join(lines)
    return edited if newline else edited.removesuffix("\n"), plan.changes


def _edit_mapping(node: Any, wanted: Mapping[str, Any], prefix: str, plan: _Plan) -> None:
    added = []
    for key, value in wanted.items():
        dotted = f"{prefix}{key}"
        if key not in node:
            if value is not None:  # an absent nullable key already is null
                added.append((key, value))
                plan.changes.append((dotted, ABSENT, value))
            continue
        old = node[key]
        if same_value(old, value):
            continue
        if _is_block_mapping(old) and isinstance(value, Mapping) and value:
            _edit_mapping(old, value, f"{dotted}.", plan)
            continue
        plan.changes.append((dotted, _plain(old), _ordered_like(old, value)))
        try:
            plan.edits.append(_replace_value(plan.lines, node, key, value))
        except _CannotEdit:
            plan.editable = False
    for key in node:
        if key not in wanted:
            line, col = node.lc.key(key)
            plan.edits.append(_Edit(line, _extent_end(plan.lines, line, col), []))
            plan.changes.append((f"{prefix}{key}", _plain(node[key]), ABSENT))
    if added and not node:
        plan.editable = False
    elif added:
        line, col = node.lc.key(list(node)[-1])
        end = _extent_end(plan.lines, line, col)
        plan.edits.append(_Edit(end + 1, end, _block_lines(added, " " * col)))


def _replace_value(lines: list[str], node: Any, key: str, value: Any) -> _Edit:
    """The edit that writes ``value`` as the text of ``node[key]``, on the key's own line."""
    key_line, key_col = node.lc.key(key)
    old = node[key]
    value = _ordered_like(old, value)
    if _is_block_mapping(old) or (isinstance(old, list) and not old.fa.flow_style()):
        # a block collection becomes one line: its lines go (its own comments with them)
        indent = " " * key_col
        return _Edit(
            key_line,
            _extent_end(lines, key_line, key_col),
            [f"{indent}{key}: {_flow_text(value)}\n"],
        )
    if old is None:
        start_line, start_col = key_line, _after_colon(lines[key_line], key_col, key)
    else:
        start_line, start_col = node.lc.value(key)
    end_line, end_col = _value_end(lines, start_line, start_col)
    text = _flow_text(value, quote=lines[start_line][start_col : start_col + 1])
    head = lines[start_line][:start_col]
    if head.endswith(":"):
        text = f" {text}"
    grown = len(text) - (end_col - start_col) if start_line == end_line else 0
    tail = _realign(lines[end_line][end_col:], grown)
    return _Edit(start_line, end_line, [f"{head}{text}{tail}"])


def _after_colon(line: str, key_col: int, key: str) -> int:
    """Where an empty value (``key:`` meaning null) would start: just after the colon."""
    colon = line.find(":", key_col + len(key))
    if colon < 0:
        raise _CannotEdit(key)
    rest = line[colon + 1 :]
    value = rest.lstrip(" ")
    if value.strip() and not value.startswith("#"):  # `key: null` or `key: ~`
        return colon + 1 + len(rest) - len(value)
    return colon + 1


def _value_end(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """Where the value text starting at ``(line, col)`` ends (exclusive)."""
    text = lines[line]
    first = text[col : col + 1]
    if first in ("[", "{"):
        return _flow_end(lines, line, col)
    if first in ('"', "'"):
        end = col + 1
        while end < len(text):
            if text[end] == "\\" and first == '"':
                end += 2
                continue
            if text[end] == first:
                if first == "'" and text[end + 1 : end + 2] == "'":
                    end += 2
                    continue
                return line, end + 1
            end += 1
        raise _CannotEdit(text)  # a quoted scalar over several lines
    if first in ("|", ">", "&", "*", "!"):
        raise _CannotEdit(text)  # block scalars, anchors, aliases, tags
    comment = re.search(r"\s#", text[col:])
    end = col + comment.start() if comment else len(text.rstrip("\r\n"))
    return line, len(text[:end].rstrip())


def _flow_end(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """The end of a flow collection (``[...]`` or ``{...}``), over as many lines as it takes."""
    depth, quote = 0, ""
    for number in range(line, len(lines)):
        text = lines[number]
        for index in range(col if number == line else 0, len(text)):
            char = text[index]
            if quote:
                quote = "" if char == quote else quote
            elif char in ("'", '"'):
                quote = char
            elif char == "#" and text[index - 1 : index].isspace():
                break  # a comment runs to the end of the line
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    return number, index + 1
    raise _CannotEdit(lines[line])


def _realign(tail: str, grown: int) -> str:
    """The rest of a line after a value that grew by ``grown`` characters: a comment keeps its
    column while there is room (one space at least)."""
    match = re.fullmatch(r"([ \t]*)(#[^\r\n]*)?(\r?\n)?", tail)
    if match is None or match.group(2) is None:
        return tail.lstrip(" \t") if match else tail
    spaces, comment, newline = match.group(1), match.group(2), match.group(3) or ""
    return " " * max(1, len(spaces) - grown) + comment + newline


def _extent_end(lines: list[str], line: int, col: int) -> int:
    """The last line of the key at ``(line, col)``: its own and the deeper-indented ones after
    it (children, continued comments), trailing blank lines left out."""
    end = line
    for number in range(line + 1, len(lines)):
        text = lines[number]
        if not text.strip():
            continue
        if len(text) - len(text.lstrip(" ")) <= col:
            break
        end = number
    return end


def _block_lines(items: list[tuple[str, Any]], indent: str) -> list[str]:
    """New keys in params.yaml's style: a mapping as a block of one-line values (as
    select.candidates' families are), anything else on the key's line."""
    lines = []
    for key, value in items:
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{key}:\n")
            lines.extend(f"{indent}  {k}: {_flow_text(v)}\n" for k, v in value.items())
        else:
            lines.append(f"{indent}{key}: {_flow_text(value)}\n")
    return lines


def _plain(value: Any) -> Any:
    """A value read by ruamel's round trip as plain dicts, lists and scalars (for the log)."""
    return json.loads(json.dumps(value))


def _ordered_like(old: Any, new: Any) -> Any:
    """``new`` with the keys its mappings share with ``old`` in ``old``'s order (a browser's
    JSON may sort them): ``{low: 0.1, high: 0.5}`` stays in that order."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = [k for k in old if k in new] + [k for k in new if k not in old]
        return {k: _ordered_like(old.get(k), new[k]) for k in keys}
    if isinstance(old, list | tuple) and isinstance(new, list | tuple) and len(old) == len(new):
        return [_ordered_like(o, n) for o, n in zip(old, new, strict=True)]
    return new


def _is_block_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and hasattr(value, "fa") and not value.fa.flow_style()


def same_value(old: Any, new: Any) -> bool:
    """Equal as params: ``0 == 0.0`` (a float field read from JSON), mappings in any key order,
    lists and tuples alike; but ``true`` is not ``1`` and ``null`` is nothing else."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool) and old == new
    if isinstance(old, int | float) and isinstance(new, int | float):
        return old == new
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(same_value(old[k], new[k]) for k in old)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        return len(old) == len(new) and all(map(same_value, old, new))
    if isinstance(old, str) or isinstance(new, str):
        return isinstance(old, str) and isinstance(new, str) and old == new
    return type(old) is type(new) and old == new


def _flow_text(value: Any, quote: str = "") -> str:
    """``value`` as params.yaml writes it on one line: ``[8, 16]``, ``{low: 0.0, high: 0.5}``,
    ``null``; a string quoted only when it must be (or when it was: ``quote``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow_text(item) for item in value) + "]"
    text = str(value)
    if quote == "'":
        return "'" + text.replace("'", "''") + "'"
    if (
        quote != '"'
        and PLAIN_STRING.fullmatch(text)
        and safe_yaml().load(text) == text
        and text.lower() not in YAML_11_BOOLEANS
    ):
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


PLAIN_STRING = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:@+-]*")
# strings YAML 1.2 reads as strings but YAML 1.1 (PyYAML, as other tools read params.yaml) as
# booleans: quoted, like the floats of _float_text
YAML_11_BOOLEANS = frozenset({"y", "n", "yes", "no", "on", "off"})


def _float_text(value: float) -> str:
    """A float YAML 1.2 and 1.1 both read as one: ``0.000001``, not ``1e-06`` (a string to
    PyYAML); whole numbers keep their ``.0``."""
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text if "." in text else f"{text}.0"


def _round_trip() -> YAML:
    return YAML()  # round-trip mode: line and column of every key and value


def rewrite(text: str, wanted: Mapping[str, Any]) -> str:
    """The whole file dumped by ruamel's round trip (comments and key order kept, layout
    not): the fallback for a layout :func:`edit_params_text` cannot edit."""
    yaml = _round_trip()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    tree = yaml.load(text)
    _merge(tree, wanted)
    stream = io.StringIO()
    yaml.dump(tree, stream)
    return stream.getvalue()


def _merge(node: Any, wanted: Mapping[str, Any]) -> None:
    for key, value in wanted.items():
        old = node.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            _merge(old, value)
            for gone in [k for k in old if k not in value]:
                del old[gone]
        elif key not in node or not same_value(old, value):
            node[key] = value
