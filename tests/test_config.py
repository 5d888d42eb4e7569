import pytest

from homegrown.config import PRESET_NAMES, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.model import count_params


def test_every_preset_builds_and_llama_shapes_have_published_sizes():
    counts = {name: count_params(get_preset(name).model) for name in PRESET_NAMES}
    assert counts["llama-8b"] == 8_030_261_248  # Meta-Llama-3-8B
    assert counts["llama-1b"] == 1_235_814_400  # Llama-3.2-1B (tied embeddings)
    assert counts["tiny"] < counts["small"] < counts["gpt2-124m"]


def test_overrides_are_typed_and_validated():
    p = apply_overrides(get_preset("tiny"), ["train.lr=1e-2", "model.n_layers=3", "train.compile=true"])
    assert p.train.lr == 0.01 and p.model.n_layers == 3 and p.train.compile is True
    with pytest.raises(HomegrownError, match="has no field"):
        apply_overrides(get_preset("tiny"), ["train.nope=1"])
    with pytest.raises(HomegrownError, match="bad value"):
        apply_overrides(get_preset("tiny"), ["train.max_steps=ten"])
    with pytest.raises(HomegrownError, match="must look like"):
        apply_overrides(get_preset("tiny"), ["lr=1"])


def test_width_override_recomputes_ffn_and_seq_len_grows_context():
    widen = ["model.d_model=384", "model.n_heads=8", "model.n_kv_heads=8", "train.seq_len=512"]
    p = apply_overrides(get_preset("small"), widen)
    assert p.model.ffn_hidden == 1024 and p.model.max_seq_len == 512


def test_unknown_preset_lists_choices():
    with pytest.raises(HomegrownError, match="choose one of: tiny, small"):
        get_preset("huge")


def test_presets_are_independent_copies():
    get_preset("small").train.lr = 123.0
    assert get_preset("small").train.lr != 123.0
