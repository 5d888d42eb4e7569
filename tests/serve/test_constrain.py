"""The grammar compiler and matcher (serve/constrain.py) on the tokenizers models come with: our byte-level BPE
and SmolLM2's imported 49,152-token one. Masks are checked against the tokens' own text, so a wrong tokenizer
mapping (ids shifted, bytes mis-decoded) fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from homegrown.bundle import load_chat_format
from homegrown.serve.constrain import ConstraintError, ConstraintSpec, GrammarCompiler
from homegrown.tokenizer import load_tokenizer

CALL = {"type": "object", "properties": {"name": {"const": "get_weather"},
                                         "arguments": {"type": "object",
                                                       "properties": {"city": {"type": "string", "maxLength": 8}},
                                                       "required": ["city"], "additionalProperties": False}},
        "required": ["name", "arguments"], "additionalProperties": False}


def _compiler(tok: Tokenizer, stop_ids: list[int]) -> GrammarCompiler:
    return GrammarCompiler(tok, tok.get_vocab_size(), stop_ids)


def _allowed_texts(tok: Tokenizer, allowed: torch.Tensor) -> set[str]:
    return {tok.decode([i]) for i in torch.nonzero(allowed).flatten().tolist()}


def _feed(compiler: GrammarCompiler, spec: ConstraintSpec, text: str):
    """A matcher advanced through `text`, each token checked against the mask before it is taken."""
    matcher = compiler.matcher(spec)
    for token in compiler.tokenizer.encode(text, add_special_tokens=False).ids:
        assert matcher.allowed()[token], f"{compiler.tokenizer.decode([token])!r} refused in {text!r}"
        matcher.advance(token)
    return matcher


@pytest.fixture(scope="module")
def ours(tiny_run: Path) -> GrammarCompiler:
    tok = load_tokenizer(tiny_run)
    return _compiler(tok, [tok.token_to_id("<|endoftext|>")])


@pytest.fixture(scope="module")
def smol(smol_run: Path) -> GrammarCompiler:
    tok, chat = load_chat_format(smol_run)
    assert tok.get_vocab_size() == 49152
    return _compiler(tok, list(chat.stop_ids))


@pytest.mark.parametrize("which", ["ours", "smol"])
def test_json_masks_follow_the_tokens_text(which: str, request: pytest.FixtureRequest) -> None:
    compiler: GrammarCompiler = request.getfixturevalue(which)
    tok = compiler.tokenizer
    spec = ConstraintSpec.json_schema({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                       "required": ["ok"], "additionalProperties": False})
    first = _allowed_texts(tok, compiler.matcher(spec).allowed())
    assert first and all('{"ok": true}'.startswith(t) or '{"ok": false}'.startswith(t) for t in first), first
    matcher = _feed(compiler, spec, '{"ok": ')
    after = _allowed_texts(tok, matcher.allowed())
    assert after and all("true}".startswith(t) or "false}".startswith(t) for t in after), after
    matcher = _feed(compiler, spec, '{"ok": true')
    assert not matcher.done and not matcher.accepting
    matcher = _feed(compiler, spec, '{"ok": true}')
    assert matcher.done and matcher.accepting
    # The stop tokens are allowed exactly where the JSON may end: a top-level number may also go on.
    number = _feed(compiler, ConstraintSpec.json_schema({"type": "integer", "minimum": 0, "maximum": 99}), "4")
    allowed = number.allowed()
    stops = compiler._ll.eos_tokens
    assert all(allowed[s] for s in stops) and number.accepting and not number.done
    assert _allowed_texts(tok, allowed) - {tok.decode([s]) for s in stops} <= {str(d) for d in range(10)}


def test_same_schema_compiles_once(ours: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    before = ours.cached
    ours.check(ConstraintSpec.json_schema(schema))
    ours.check(ConstraintSpec.json_schema(json.loads(json.dumps(schema)), param="tools"))
    assert ours.cached == before + 1
    # Property order is generation order, so it is part of what is compiled.
    ours.check(ConstraintSpec.json_schema(dict(reversed(list(schema.items())))))
    assert ours.cached == before + 2


@pytest.mark.parametrize("schema,reason", [
    ({"type": "foo"}, "Invalid type"),
    ({"type": "object", "propertyNames": {"maxLength": 2}}, "propertyNames"),
    ({"type": "string", "pattern": "(("}, "unclosed group"),
    ({"type": "object", "properties": {"a": {"$ref": "#/nope"}}, "required": ["a"]}, "/nope"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 9, "maximum": 1}}, "required": ["a"]},
     "unsatisfiable"),
])
def test_schemas_that_cannot_be_enforced_are_refused_with_the_reason(ours: GrammarCompiler, schema: dict,
                                                                     reason: str) -> None:
    with pytest.raises(ConstraintError, match=reason) as e:
        ours.check(ConstraintSpec.json_schema(schema, param="tools"))
    assert e.value.param == "tools" and str(e.value).startswith("tools: ")


def test_tagged_calls_free_text_then_json_then_end(ours: GrammarCompiler) -> None:
    other = {"type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"], "additionalProperties": False}
    auto = ConstraintSpec.tagged("<tool_call>\n", [CALL, other], "\n</tool_call>", trigger="<tool_call>")
    assert _feed(ours, auto, "Just text, no call.").accepting
    call = '<tool_call>\n{"x": 2}\n</tool_call>'
    matcher = _feed(ours, auto, "Let me look. " + call)
    assert matcher.accepting and not matcher.done  # more text or calls may follow
    _feed(ours, auto, f'{call} then {call.replace("2", "1")}')
    _feed(ours, auto, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    # After the trigger only the forced newline, then only JSON of one of the schemas.
    after = _feed(ours, auto, "Hi <tool_call>")
    assert _allowed_texts(ours.tokenizer, after.allowed()) <= {"\n", "\n{", '\n{"'}
    inside = _feed(ours, auto, '<tool_call>\n{"')
    assert not inside.allowed()[ours.tokenizer.token_to_id("z") or 0]

    required = ConstraintSpec.tagged("<tool_call>\n", [other], "\n</tool_call>", required=True, parallel=False)
    assert "{" not in _allowed_texts(ours.tokenizer, ours.matcher(required).allowed())
    assert _feed(ours, required, call).done  # one call, and nothing after it
    several = ConstraintSpec.tagged("<tool_call>\n", [other], "\n</tool_call>", required=True)
    assert not _feed(ours, several, call).done and _feed(ours, several, call).accepting
    _feed(ours, several, f"{call}\n{call}")


def test_tagged_trigger_that_is_a_special_token_is_matched_as_that_token(smol: GrammarCompiler) -> None:
    """SmolLM2 has no <tool_call> token; its <|im_start|> stands in for a model (Qwen) whose trigger is one."""
    spec = ConstraintSpec.tagged("<|im_start|>", [CALL], "<|im_end|>", required=True, parallel=False)
    tok = smol.tokenizer
    start = smol.matcher(spec).allowed()
    assert torch.nonzero(start).flatten().tolist() == [tok.token_to_id("<|im_start|>")]
    text = '<|im_start|>{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>'
    assert _feed(smol, spec, text).done


def test_bad_tagged_specs_are_refused() -> None:
    with pytest.raises(ConstraintError, match="trigger"):
        ConstraintSpec.tagged("<call>", [CALL], "</call>", trigger="<x>")
    with pytest.raises(ConstraintError, match="at least one schema"):
        ConstraintSpec.tagged("<call>", [], "</call>")
