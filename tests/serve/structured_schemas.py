"""JSON schemas whose every valid document is short, shared by the structured-output tests.

Why a test on an untrained model cannot flake: each schema's language is finite (strings have maxLength, arrays
maxItems, numbers a range and a multipleOf or integer type, objects additionalProperties false) and its longest
document, written with the grammar's fixed separators and the longest escape (`\\uXXXX`, 6 bytes) for every
character, is under `BOUND_BYTES` bytes. Every token the grammar allows carries at least one byte (special tokens
are never allowed inside JSON), so whatever the model samples the JSON is complete within `BOUND_BYTES` tokens,
and the reply ends with finish_reason "stop" — it never depends on where sampling happens to go.
"""

from __future__ import annotations

BOUND_BYTES = 400
"""Over the longest document of any schema below (the nested one: 214 bytes with 6 bytes for every string character)."""

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                      "zip": {"type": "integer", "minimum": 10000,
                                                              "maximum": 99999}},
                    "required": ["city"], "additionalProperties": False},
        "score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5},
        "kind": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5}, {"type": "boolean"},
                           {"type": "null"}]},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}

SCHEMAS = {
    "nested": NESTED,
    "array": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 99}, "minItems": 2,
              "maxItems": 4},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"enum": [1, 2, 3]}},
             "required": ["color", "size"], "additionalProperties": False},
    "any_of": {"anyOf": [{"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
                          "required": ["a"], "additionalProperties": False},
                         {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                         {"type": "string", "maxLength": 5}]},
    "optional": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 1000},
                                                  "note": {"type": "string", "maxLength": 10},
                                                  "done": {"type": "boolean"}},
                 "required": ["id"], "additionalProperties": False},
}
