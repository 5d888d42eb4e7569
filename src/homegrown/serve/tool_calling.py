"""A chat request's `tools`, `tool_choice` and `parallel_tool_calls` → what serving it takes: the tools the prompt
shows, the constraint the engine enforces, and how many calls the reply may hold.

The call's arguments always follow the function's JSON schema: every call is generated under a grammar
(serve/constrain.py) whose JSON is `{"name": <one of the tools>, "arguments": <that tool's schema>}` between
`<tool_call>\\n` and `\\n</tool_call>` — the Hermes format the prompt asks for (chat_template.TOOLS_INSTRUCTIONS).
`auto` leaves the model free until it writes `<tool_call>`, then the JSON is constrained; `required` constrains
the whole reply to calls and nothing else; a named function to exactly one call of it; `none` shows no tools and
parses no calls. `parallel_tool_calls: false` allows one call per reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from homegrown.chat_template import TOOL_CALL_END, TOOL_CALL_START
from homegrown.serve.constrain import ConstraintSpec
from homegrown.serve.protocol import ChatCompletionRequest, NamedToolChoice
from homegrown.serve.tool_prompt import ToolRequestError

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
"""A function without `parameters` takes none (OpenAI: "omitting parameters defines a function with an empty
parameter list")."""


@dataclass(frozen=True)
class ToolPlan:
    """How to serve a request's tools: `tools` for the prompt (None: show none), the grammar of its calls (None:
    unconstrained, no calls possible), and the most calls one reply may hold (None: any number)."""

    tools: list[dict[str, Any]] | None = None
    constraint: ConstraintSpec | None = None
    max_calls: int | None = None

    @property
    def calls(self) -> bool:
        """Whether the reply is parsed for calls."""
        return self.constraint is not None


def arguments_schema(index: int, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tool's `parameters`, checked to be a JSON Schema (its own draft, `$schema` or 2020-12) that describes an
    object, as arguments are; a 400 naming `tools.N.function.parameters` otherwise."""
    param = f"tools.{index}.function.parameters"
    if parameters is None:
        return NO_ARGUMENTS
    try:
        validator_for(parameters).check_schema(parameters)
    except SchemaError as err:
        raise ToolRequestError(f"{param} is not a valid JSON Schema: {err.message}", param) from err
    kind = parameters.get("type", "object")
    if kind != "object":
        raise ToolRequestError(f"{param} must describe an object (the arguments), got type {kind!r}", param)
    return {"type": "object", **parameters}


def calls_schema(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON of one call of any of `functions` (name → arguments schema): the function's name, then arguments
    valid against its schema (properties are generated in this order). Each arguments schema moves one level
    down, so its local definitions (`$defs`, `definitions`: what pydantic writes for nested models) move to the
    root, renamed per function so several tools' cannot collide, and its `#/...` references follow them."""
    defs: dict[str, Any] = {}

    def move(name: str, node: Any) -> Any:
        if isinstance(node, dict):
            return {key: _moved_ref(name, value) if key == "$ref" and isinstance(value, str)
                    and value.startswith("#") else move(name, value) for key, value in node.items()}
        if isinstance(node, list):
            return [move(name, v) for v in node]
        return node

    calls = []
    for name, arguments in functions.items():
        moved = move(name, arguments)
        moved.pop("$schema", None)  # the draft was read by `arguments_schema`; a subschema does not restate it
        for key in ("$defs", "definitions"):
            for def_name, definition in (moved.pop(key, None) or {}).items():
                defs[f"{name}.{key}.{def_name}"] = definition
        calls.append({"type": "object", "properties": {"name": {"const": name}, "arguments": moved},
                      "required": ["name", "arguments"], "additionalProperties": False})
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {**schema, "$defs": defs} if defs else schema


def _moved_ref(name: str, ref: str) -> str:
    """A reference inside a function's arguments schema, as seen from the call schema's root."""
    parts = ref[1:].split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] in ("$defs", "definitions"):
        return "#/$defs/" + f"{name}.{parts[1]}.{parts[2]}" + "".join("/" + p for p in parts[3:])
    return "#/properties/arguments" + ref[1:]


def plan_tools(req: ChatCompletionRequest) -> ToolPlan:
    """The ToolPlan of a request; a ToolRequestError (400) for a choice that names no tool, duplicate names or a
    bad schema."""
    choice = req.tool_choice
    if not req.tools:
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            raise ToolRequestError("tool_choice: 'required' or a named function needs tools; send the functions "
                                   "in tools", "tool_choice")
        return ToolPlan()
    names = [t.function.name for t in req.tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ToolRequestError(f"tools: the function name {duplicate!r} is used twice; names must be unique",
                               "tools")
    schemas = {t.function.name: arguments_schema(i, t.function.parameters) for i, t in enumerate(req.tools)}
    if choice == "none":
        return ToolPlan()
    parallel = req.parallel_tool_calls is not False
    prompt_tools = [t.model_dump(exclude_none=True) for t in req.tools]
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in schemas:
            raise ToolRequestError(f"tool_choice: no function named {name!r} in tools (they are "
                                   f"{', '.join(names)})", "tool_choice")
        return ToolPlan(prompt_tools, _tagged({name: schemas[name]}, required=True, parallel=False), 1)
    return ToolPlan(prompt_tools, _tagged(schemas, required=choice == "required", parallel=parallel),
                    None if parallel else 1)


def _tagged(functions: dict[str, dict[str, Any]], required: bool, parallel: bool) -> ConstraintSpec:
    return ConstraintSpec.tagged(TOOL_CALL_START + "\n", [calls_schema(functions)], "\n" + TOOL_CALL_END,
                                 trigger=TOOL_CALL_START, required=required, parallel=parallel, separator="\n",
                                 param="tools")
