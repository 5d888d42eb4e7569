import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from homegrown.chat_template import CHAT_SPECIAL_TOKENS
from homegrown.errors import HomegrownError
from homegrown.tokenizer import IncrementalDecoder, eot_id, load_tokenizer, train_tokenizer

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


MIXED = "naïve café — 東京 and 🤖🎨 paint: \"ok\" 123 ∑x² (Ünïcödé) end."


def _check_incremental(tok, text: str) -> None:
    """Fed one token at a time, the decoder's text is always the full decode up to its last complete character,
    the pieces it returns add up to that, and at the end it is the full decode."""
    ids = tok.encode(text, add_special_tokens=False).ids
    decoder, pieces = IncrementalDecoder(tok), []
    for n in range(1, len(ids) + 1):
        pieces.append(decoder.add(ids[n - 1]))
        full = tok.decode(ids[:n])
        assert decoder.text == (full if not full.endswith("\ufffd") else decoder.text)
        assert full.startswith(decoder.text) and "\ufffd" not in decoder.text
    assert decoder.text == "".join(pieces) == tok.decode(ids) == text


def test_incremental_decode_of_multibyte_characters_split_across_tokens(tmp_path):
    tok = train_tokenizer(["plain ascii text only, nothing else here"] * 20, 300, tmp_path / "tok.json")
    ids = tok.encode(MIXED, add_special_tokens=False).ids
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)  # characters really are split across tokens
    _check_incremental(tok, MIXED)


def test_incremental_decode_keeps_context_for_metaspace_decoders():
    """SentencePiece-style decoders drop the leading space of the first token they see: decoding each new token
    alone would glue words together, so the decoder keeps the previous tokens as context."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(["the robot learns to paint the sky"] * 20, trainer=trainer)
    assert tok.decode(tok.encode("the robot").ids[1:]) == "robot"  # the strip the window must undo
    _check_incremental(tok, "the robot paints the sky the sky learns to paint the robot")
