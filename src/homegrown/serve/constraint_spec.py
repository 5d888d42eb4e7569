"""What a constrained sequence must produce (`ConstraintSpec`) and the 400 for one that cannot be enforced.

Kept apart from `constrain` (llguidance, torch, the per-sequence matcher) so that request parsing — serve's
protocol and the gateway, which must start without torch — can build and check specs without loading the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from homegrown.errors import HomegrownError

ENDS_ELSEWHERE = ("stop", "stop_token_ids", "min_tokens", "ignore_eos")
"""Sampling fields that would end or cut a reply elsewhere than its grammar does. A request that sets one beside a
constraint is a 400 naming it; a server default for one (`--generation-config`) does not apply to a constrained
request (protocol.with_defaults)."""


class ConstraintError(HomegrownError):
    """A schema or grammar that cannot be enforced (invalid, unsatisfiable, or using what llguidance does not
    implement); `param` is the request parameter to name in the 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ConstraintSpec:
    """What a constrained sequence must produce. Schemas are kept as compact JSON text so a spec is hashable and
    two requests with the same schema share one compiled grammar."""

    kind: Literal["json_object", "json_schema", "tagged"]
    schemas: tuple[str, ...] = ()
    begin: str = ""
    end: str = ""
    trigger: str = ""
    required: bool = False
    parallel: bool = True
    separator: str = "\n"
    param: str = field(default="response_format", compare=False)
    """The request parameter this came from, for error messages; not part of the cache key."""

    @classmethod
    def json_object(cls, param: str = "response_format") -> ConstraintSpec:
        return cls("json_object", (_schema_text({"type": "object"}, param),), param=param)

    @classmethod
    def json_schema(cls, schema: dict[str, Any], param: str = "response_format") -> ConstraintSpec:
        return cls("json_schema", (_schema_text(schema, param),), param=param)

    @classmethod
    def tagged(cls, begin: str, schemas: list[dict[str, Any]], end: str, *, trigger: str | None = None,
               required: bool = False, parallel: bool = True, separator: str = "\n",
               param: str = "tools") -> ConstraintSpec:
        """Free text with embedded `begin` JSON `end` segments, the JSON matching one of `schemas` (see the
        module docstring)."""
        trigger = begin if trigger is None else trigger
        if not trigger or not begin.startswith(trigger):
            raise ConstraintError(f"{param}: the trigger {trigger!r} must be a non-empty start of {begin!r}", param)
        if not schemas:
            raise ConstraintError(f"{param}: at least one schema is needed", param)
        return cls("tagged", tuple(_schema_text(s, param) for s in schemas), begin, end, trigger, required, parallel,
                   separator, param=param)


def _schema_text(schema: Any, param: str) -> str:
    if not isinstance(schema, dict):
        raise ConstraintError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}", param)
    # Key order is kept: properties are generated in the order the schema lists them.
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
