import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer

from homegrown.chat_template import CHAT_TEMPLATE, TOKENIZER_CONFIG, read_chat_format
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.posttrain.chat import TemplateNotPrefixStable, encode_conversation, read_chat_jsonl
from homegrown.posttrain.sft import PackedChats
from homegrown.tokenizer import load_tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is os.path.join?"},
            {"role": "assistant", "content": "It joins path parts."}, {"role": "user", "content": "Thanks!"}]


def _chat(directory, tok):
    return read_chat_format(directory, tok)


def test_unknown_role_is_refused_by_our_template(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    with pytest.raises(HomegrownError, match="roles must be system, user, assistant or tool, got function"):
        _chat(tiny_run, tok).render([{"role": "function", "content": "x"}])


OTHER = [{"role": "user", "content": "How do I install a package on Debian?"},
         {"role": "assistant", "content": "Run apt install followed by the package name."}]


def test_encoding_matches_the_template_and_masks_only_assistant_replies(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    chat = _chat(tiny_run, tok)
    enc = encode_conversation(tok, chat, MESSAGES)
    assert enc.ids == tok.encode(chat.render(MESSAGES, add_generation_prompt=False), add_special_tokens=False).ids
    learned = tok.decode([i for i, m in zip(enc.ids, enc.mask, strict=True) if m], skip_special_tokens=False)
    assert learned == "It joins path parts.<|end|>"
    # the prompt a server sends ends exactly where the learned tokens begin
    prompt = tok.encode(chat.render(MESSAGES[:2]), add_special_tokens=False).ids
    assert enc.ids[: len(prompt)] == prompt and enc.mask[len(prompt)] == 1 and not any(enc.mask[: len(prompt)])


def test_our_template_masks_exactly_as_the_per_turn_encoding_did(tiny_run):
    """Our format's ids and masks are unchanged from the hand-written per-turn encoder this replaced: each turn
    is `<|role|>\n` (context) + content + <|end|> (learned for the assistant) + `\n` (context)."""
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    chat = _chat(tiny_run, tok)
    for messages in (MESSAGES, OTHER, MESSAGES[1:3] + OTHER):
        ids, mask = [], []
        for m in messages:
            for text, learn in ((f"<|{m['role']}|>\n", 0), (m["content"] + "<|end|>", m["role"] == "assistant"),
                                ("\n", 0)):
                piece = tok.encode(text, add_special_tokens=False).ids
                ids += piece
                mask += [int(learn)] * len(piece)
        enc = encode_conversation(tok, chat, messages)
        assert (enc.ids, enc.mask) == (ids, mask)


def test_chatml_masks_learn_the_reply_and_im_end(chatml_dir, tmp_path, smollm2_template):
    """SmolLM2's own template (default system prompt included): reply + <|im_end|> learned, the rest context."""
    shutil.copytree(chatml_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / TOKENIZER_CONFIG).read_text())
    (tmp_path / "m" / TOKENIZER_CONFIG).write_text(json.dumps({**config, "chat_template": smollm2_template}))
    tok = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    chat = read_chat_format(tmp_path / "m", tok)
    messages = [*OTHER, {"role": "user", "content": "And on Fedora?"}, {"role": "assistant", "content": "dnf."}]
    enc = encode_conversation(tok, chat, messages)
    text = chat.render(messages, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert enc.ids == tok.encode(text, add_special_tokens=False).ids
    runs, current = [], []
    for i, m in zip(enc.ids, enc.mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current, skip_special_tokens=False))
            current = []
    assert runs == ["Run apt install followed by the package name.<|im_end|>", "dnf.<|im_end|>"]
    prompt = tok.encode(chat.render(messages[:3]), add_special_tokens=False).ids
    assert enc.mask[len(prompt) - 1] == 0 and enc.mask[len(prompt)] == 1


def test_a_template_whose_prefixes_change_is_refused(tiny_run, tmp_path):
    """A template that renders earlier turns differently once later ones exist (here: only the last assistant
    turn keeps its text, as reasoning templates drop old thoughts) cannot give a reply's prompt: refused."""
    shutil.copyfile(tiny_run / "tokenizer.json", tmp_path / "tokenizer.json")
    template = CHAT_TEMPLATE.replace("message['content']", "(message['content'] if loop.last or "
                                     "message['role'] != 'assistant' else '...')")
    (tmp_path / TOKENIZER_CONFIG).write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": template}))
    tok = load_tokenizer(tmp_path)
    chat = read_chat_format(tmp_path, tok)
    encode_conversation(tok, chat, OTHER)  # one reply: nothing after it to change it
    with pytest.raises(TemplateNotPrefixStable, match="does not render conversation prefixes as prefixes"):
        encode_conversation(tok, chat, [*OTHER, *OTHER])


def _tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128))


def test_loss_ignores_every_non_assistant_token(tiny_run):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    packed = PackedChats(tok, _chat(tiny_run, tok), [MESSAGES, OTHER, MESSAGES[1:3]], seq_len=127)
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
    chat = _chat(tiny_run, tok)
    first, second = encode_conversation(tok, chat, MESSAGES), encode_conversation(tok, chat, OTHER)
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
