import pytest

from homegrown.chat_template import CHAT_SPECIAL_TOKENS
from homegrown.errors import HomegrownError
from homegrown.tokenizer import eot_id, load_tokenizer, train_tokenizer

TEXTS = ["def join(a, b):\n    return a + b\n", "Debian uses apt to install packages.", "naïve café — 日本語 🙂"] * 50


def test_special_tokens_reserved_first_and_single_ids(tmp_path):
    tok = train_tokenizer(TEXTS, 300, tmp_path / "tokenizer.json")
    assert [tok.token_to_id(t) for t in CHAT_SPECIAL_TOKENS] == list(range(len(CHAT_SPECIAL_TOKENS)))
    ids = tok.encode("<|user|>\nhi<|end|>", add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id("<|user|>") and ids[-1] == tok.token_to_id("<|end|>")
    assert eot_id(tok) == 0


def test_byte_level_round_trip_of_unseen_text(tmp_path):
    tok = train_tokenizer(TEXTS, 300, tmp_path / "tokenizer.json")
    text = "Ünïcødé never seen: Ω≈ç√ \t\r\n \x00 𝔘𝔫𝔦"
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_saved_file_loads_and_vocab_size_is_respected(tmp_path):
    train_tokenizer(TEXTS, 300, tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path)
    assert tok.get_vocab_size() <= 300
    assert not list(tmp_path.glob("*.tmp"))


def test_errors_are_user_errors(tmp_path):
    with pytest.raises(HomegrownError, match="below"):
        train_tokenizer(TEXTS, 100, tmp_path / "t.json")
    with pytest.raises(HomegrownError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
