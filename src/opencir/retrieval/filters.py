"""Filters on catalogue metadata: equality, ranges and membership, ANDed.

A filter is given as a mapping (Python, HTTP) or as ``--filter`` strings (CLI)::

    {"color": "red"}                          equality
    {"brand": ["nike", "adidas"]}             membership (also {"brand": {"in": [...]}})
    {"price": {"gte": 10, "lt": 50}}          range (operators eq, in, gt, gte, lt, lte)
    ["color=red", "price<50", "brand=nike|adidas", "year>=2020"]   the CLI form

Semantics (the same in every backend, pinned by tests against Milvus):

* values are compared by kind: a value that reads as a number (``12``, ``"3.5"``; CSV
  metadata is text) is a number, ``true``/``false`` are booleans, anything else is text;
* equality and membership need the same kind and value; ranges compare numbers with
  numbers and text with text (lexicographically, so ISO dates work); a mixed comparison
  is false;
* an image without the field never matches.

``Filter.milvus_expression`` compiles a filter to a Milvus boolean expression over the
JSON metadata field; ``MetadataColumns`` evaluates it over every indexed record at once
(numpy) for backends that restrict searches by key (FAISS id selectors).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

Scalar = Union[str, float, bool]
FilterSpec = Union[Mapping[str, Any], Sequence[str], str, "Filter", None]

RANGE_OPS = ("gt", "gte", "lt", "lte")
OPS = ("eq", "in", *RANGE_OPS)
_MILVUS_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_CLI = re.compile(r"^\s*([^<>=!]+?)\s*(>=|<=|=|<|>)\s*(.*?)\s*$")
_CLI_OPS = {"=": "eq", ">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}


def normalise(value: Any) -> Scalar | None:
    """The comparable form of a metadata or filter value (None: not comparable)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.match(text):
            number = float(text)
            return number if math.isfinite(number) else None
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return value
    return None


def _kind(value: Scalar) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, float) else "text"


@dataclass(frozen=True)
class Condition:
    """One test on one metadata field: ``field op value``."""

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]

    def matches(self, raw: Any) -> bool:
        value = normalise(raw)
        if value is None:
            return False
        if self.op == "in":
            return any(_kind(v) == _kind(value) and v == value for v in self.value)  # type: ignore[union-attr]
        target = self.value
        if _kind(target) != _kind(value):  # type: ignore[arg-type]
            return False
        if self.op == "eq":
            return value == target
        if isinstance(value, bool):
            return False  # booleans have no order
        return {"gt": value > target, "gte": value >= target, "lt": value < target, "lte": value <= target}[self.op]  # type: ignore[operator]


@dataclass(frozen=True)
class Filter:
    """Conditions that must all hold (AND)."""

    conditions: tuple[Condition, ...]

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        """Whether one record's metadata passes."""
        metadata = metadata or {}
        return all(c.field in metadata and c.matches(metadata[c.field]) for c in self.conditions)

    def canonical(self) -> str:
        """A stable text form (cache key, logs)."""
        return json.dumps([[c.field, c.op, list(c.value) if isinstance(c.value, tuple) else c.value]
                           for c in sorted(self.conditions, key=lambda c: (c.field, c.op))], ensure_ascii=False)

    def milvus_expression(self, json_field: str) -> str:
        """The Milvus boolean expression over the JSON field holding normalised metadata."""
        parts = []
        for c in self.conditions:
            ref = f"{json_field}[{_milvus_literal(c.field)}]"
            if c.op == "in":  # milvus-lite refuses `json[key] in [...]`: an OR of equalities
                parts.append("(" + " or ".join(f"{ref} == {_milvus_literal(v)}" for v in c.value) + ")")  # type: ignore[union-attr]
            elif c.op == "eq":
                parts.append(f"{ref} == {_milvus_literal(c.value)}")
            else:
                parts.append(f"{ref} {_MILVUS_OPS[c.op]} {_milvus_literal(c.value)}")
        return " and ".join(parts)


def _milvus_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _scalar(value: Any, where: str) -> Scalar:
    normal = normalise(value)
    if normal is None or isinstance(value, (list, dict)):
        raise ValueError(f"filter {where}: {value!r} is not a text, number or boolean value")
    return normal


def _conditions(field: str, spec: Any) -> list[Condition]:
    if not isinstance(field, str) or not field:
        raise ValueError(f"filter field names must be non-empty strings, got {field!r}")
    if isinstance(spec, (list, tuple)):
        spec = {"in": spec}
    if not isinstance(spec, Mapping):
        return [Condition(field, "eq", _scalar(spec, field))]
    if not spec:
        raise ValueError(f"filter {field}: no operator given; use one of {', '.join(OPS)}")
    out = []
    for op, value in spec.items():
        op = str(op).lstrip("$")
        if op not in OPS:
            raise ValueError(f"filter {field}: unknown operator {op!r}; use one of {', '.join(OPS)}")
        if op == "in":
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"filter {field}: 'in' needs a non-empty list of values, got {value!r}")
            out.append(Condition(field, "in", tuple(_scalar(v, field) for v in value)))
        else:
            scalar = _scalar(value, field)
            if op in RANGE_OPS and isinstance(scalar, bool):
                raise ValueError(f"filter {field}: {op} compares numbers or text, not booleans")
            out.append(Condition(field, op, scalar))
    return out


def parse_cli_filter(text: str) -> dict[str, Any]:
    """One ``--filter`` string (``color=red``, ``price<50``, ``brand=a|b``, or a JSON object)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            payload = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ValueError(f"--filter {text!r} is not valid JSON: {err}") from None
        if not isinstance(payload, dict):
            raise ValueError(f"--filter {text!r}: a JSON filter must be an object")
        return payload
    match = _CLI.match(text)
    if not match or not match.group(3):
        raise ValueError(f"--filter {text!r} is not of the form FIELD=VALUE, FIELD=A|B, FIELD<V, FIELD<=V, "
                         "FIELD>V, FIELD>=V or a JSON object")
    field, op, value = match.groups()
    if op == "=" and "|" in value:
        return {field: {"in": value.split("|")}}
    return {field: {_CLI_OPS[op]: value}}


def parse_filter(spec: FilterSpec) -> Filter | None:
    """A ``Filter`` from a mapping, a list of CLI strings, one CLI string or a Filter (None: no filter).
    Bad filters raise ValueError saying what is wrong."""
    if spec is None or isinstance(spec, Filter):
        return spec
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, Mapping):
        mappings: Iterable[Mapping[str, Any]] = [spec]
    elif isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        mappings = [parse_cli_filter(s) for s in spec]
    else:
        raise ValueError(f"a filter is an object such as {{\"color\": \"red\"}} or FIELD=VALUE strings, got {spec!r}")
    conditions = [c for mapping in mappings for field, value in mapping.items() for c in _conditions(field, value)]
    if not conditions:
        return None
    return Filter(tuple(conditions))


def normalise_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """The comparable form of one record's metadata (what a Milvus collection stores)."""
    out: dict[str, Scalar] = {}
    for key, raw in (metadata or {}).items():
        value = normalise(raw)
        if value is not None:
            out[str(key)] = value
    return out


class MetadataColumns:
    """Every record's metadata as columns (one per field, built on first use) for fast filters."""

    def __init__(self, keys: Sequence[int], metadata: Sequence[Mapping[str, Any] | None]) -> None:
        self.keys = np.asarray(keys, dtype=np.int64)
        self._metadata = metadata
        self._columns: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _column(self, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers float64 with NaN, texts object with None, booleans int8 with -1) of ``field``."""
        if field not in self._columns:
            n = len(self._metadata)
            numbers = np.full(n, np.nan)
            texts = np.full(n, None, dtype=object)
            bools = np.full(n, -1, dtype=np.int8)
            for i, record in enumerate(self._metadata):
                if record and field in record:
                    value = normalise(record[field])
                    if isinstance(value, bool):
                        bools[i] = int(value)
                    elif isinstance(value, float):
                        numbers[i] = value
                    elif value is not None:
                        texts[i] = value
            self._columns[field] = (numbers, texts, bools)
        return self._columns[field]

    def _equal(self, field: str, value: Scalar) -> np.ndarray:
        numbers, texts, bools = self._column(field)
        if isinstance(value, bool):
            return bools == int(value)
        if isinstance(value, float):
            return numbers == value
        return texts == value

    def mask(self, where: Filter) -> np.ndarray:
        """Boolean (N,) mask of the records that pass ``where``."""
        mask = np.ones(len(self.keys), dtype=bool)
        for c in where.conditions:
            if c.op == "in":
                hit = np.zeros(len(self.keys), dtype=bool)
                for v in c.value:  # type: ignore[union-attr]
                    hit |= self._equal(c.field, v)
            elif c.op == "eq":
                hit = self._equal(c.field, c.value)  # type: ignore[arg-type]
            else:
                numbers, texts, _ = self._column(c.field)
                compare = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[c.op]
                if isinstance(c.value, float):
                    with np.errstate(invalid="ignore"):
                        hit = compare(numbers, c.value)
                else:
                    hit = np.zeros(len(self.keys), dtype=bool)
                    present = np.flatnonzero(texts != None)  # noqa: E711 - elementwise on an object array
                    hit[present] = compare(texts[present], c.value).astype(bool)
            mask &= hit
        return mask

    def keys_matching(self, where: Filter) -> np.ndarray:
        """Sorted int64 keys of the records that pass ``where``."""
        return np.sort(self.keys[self.mask(where)])
