import json

import jinja2
import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.posttrain.chat import CHAT_TEMPLATE, encode_conversation, read_chat_jsonl, render_prompt
from homegrown.posttrain.sft import PackedChats
from homegrown.tokenizer import load_tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is os.path.join?"},
            {"role": "assistant", "content": "It joins path parts."}, {"role": "user", "content": "Thanks!"}]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_python_and_jinja_templates_agree(add_generation_prompt):
    jinja = jinja2.Environment().from_string(CHAT_TEMPLATE)
    expected = jinja.render(messages=MESSAGES, add_generation_prompt=add_generation_prompt)
    assert render_prompt(MESSAGES, add_generation_prompt) == expected
    assert expected.endswith("<|assistant|>\n") == add_generation_prompt


def test_unknown_role_is_a_user_error():
    with pytest.raises(HomegrownError, match="unknown chat role"):
        render_prompt([{"role": "tool", "content": "x"}])


OTHER = [{"role": "user", "content": "How do I install a package on Debian?"},
         {"role": "assistant", "content": "Run apt install followed by the package name."}]


def test_encoding_matches_the_template_and_masks_only_assistant_replies(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    enc = encode_conversation(tok, MESSAGES)
    assert enc.ids == tok.encode(render_prompt(MESSAGES, add_generation_prompt=False), add_special_tokens=False).ids
    learned = tok.decode([i for i, m in zip(enc.ids, enc.mask, strict=True) if m], skip_special_tokens=False)
    assert learned == "It joins path parts.<|end|>"
    # the prompt a server sends ends exactly where the learned tokens begin
    prompt = tok.encode(render_prompt(MESSAGES[:2]), add_special_tokens=False).ids
    assert enc.ids[: len(prompt)] == prompt and enc.mask[len(prompt)] == 1 and not any(enc.mask[: len(prompt)])


def _tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128))


def test_loss_ignores_every_non_assistant_token(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    packed = PackedChats(tok, [MESSAGES, OTHER, MESSAGES[1:3]], seq_len=127)
    x, y, mask, seg = packed.sample(2, 127, torch.Generator().manual_seed(0))
    assert 0 < mask.sum() < mask.numel()
    model = _tiny_model()
    loss = model(x, y, loss_mask=mask, segments=seg)
    scrambled = torch.where(mask.bool(), y, torch.randint_like(y, 512))  # every context target replaced
    assert torch.equal(model(x, scrambled, loss_mask=mask, segments=seg), loss)
    learned = mask.nonzero()[0]
    y2 = y.clone()
    y2[learned[0], learned[1]] = (y2[learned[0], learned[1]] + 1) % 512
    assert not torch.equal(model(x, y2, loss_mask=mask, segments=seg), loss)  # an assistant target does count


def test_packed_conversations_do_not_see_each_other(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    first, second = encode_conversation(tok, MESSAGES), encode_conversation(tok, OTHER)
    row = torch.tensor([first.ids + second.ids])
    seg = torch.tensor([[0] * len(first.ids) + [1] * len(second.ids)])
    model = _tiny_model().eval()
    with torch.no_grad():
        packed = model(row, segments=seg)[0, len(first.ids):]
        alone = model(torch.tensor([second.ids]))[0]
        unmasked = model(row)[0, len(first.ids):]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # without segments the second one would see the first


def test_bad_chat_lines_are_reported_with_line_numbers_or_rejected(tmp_path):
    good = {"messages": MESSAGES[:3]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"content": "no role"}]}), "",
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
             json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}),
             json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "user", "content": "x<|end|>"}, {"role": "assistant", "content": "y"}]}),
             json.dumps(["not", "an", "object"]), json.dumps(good)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = read_chat_jsonl(path)
    assert len(result.conversations) == 2
    found = [p.split(":", 2)[1:] for p in result.problems]
    assert [int(n) for n, _ in found] == [2, 3, 5, 6, 7, 8, 9]
    reasons = " | ".join(r for _, r in found)
    for expected in ("not valid JSON", 'has no "role"', "empty content", "as a string", "no assistant message",
                     "reserved marker <|end|>", "expected an object"):
        assert expected in reasons
    with pytest.raises(HomegrownError, match=r"chat.jsonl:2: not valid JSON"):
        read_chat_jsonl(path, strict=True)
