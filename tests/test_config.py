import json
import re

import pytest

from homegrown.config import (
    PRESET_NAMES,
    SECTIONS,
    IngestConfig,
    ModelConfig,
    Preset,
    ServeConfig,
    apply_overrides,
    field_docs,
    field_help,
    get_preset,
    load_preset,
    resolve_preset,
    save_preset,
)
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


def test_every_preset_round_trips_through_json(tmp_path):
    for name in PRESET_NAMES:
        preset = apply_overrides(get_preset(name), ["ingest.languages=en,fr", "serve.port=9001"])
        assert Preset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset, name
        assert load_preset(save_preset(preset, tmp_path / f"{name}.json")) == preset, name


def test_set_reaches_every_section_and_nested_fields():
    assert SECTIONS == ("model", "train", "data", "ingest", "sft", "distill", "dpo", "lora", "eval", "serve")
    p = apply_overrides(get_preset("tiny"), [
        "model.n_layers=3", "train.lr=0.5", "data.mixture=web=1", "ingest.workers=2", "sft.max_steps=7",
        "distill.alpha=0.25", "eval.max_items=3", "serve.max_batch=4", "ingest.filters.min_words=9",
        "ingest.filters.disabled=line_punctuation, word_count", "dpo.beta=0.5", "lora.targets=q_proj"])
    assert (p.dpo.beta, p.lora.targets) == (0.5, "q_proj")
    assert (p.model.n_layers, p.train.lr, p.data.mixture, p.ingest.workers, p.sft.max_steps) == (3, 0.5, "web=1", 2, 7)
    assert (p.distill.alpha, p.eval.max_items, p.serve.max_batch, p.ingest.filters.min_words) == (0.25, 3, 4, 9)
    assert p.ingest.filters.disabled == ["line_punctuation", "word_count"]


@pytest.mark.parametrize(("override", "message"), [
    ("plan.gpu=H100", "unknown section 'plan'; sections: model, train"),
    ("ingest.filters.nope=1", "ingest.filters has no field 'nope'; fields: min_words"),
    ("ingest.nope.min_words=1", "ingest has no section 'nope'"),
    ("ingest.filters=1", "ingest.filters is a section"),
    ("serve.port=eighty", "bad value in override 'serve.port=eighty'"),
    ("train.compile=maybe", "expected true/false"),
])
def test_bad_overrides_name_what_is_wrong(override, message):
    with pytest.raises(HomegrownError, match=re.escape(message)):
        apply_overrides(get_preset("tiny"), [override])


def test_a_saved_preset_is_checked_whole(tmp_path):
    path = tmp_path / "preset.json"
    good = get_preset("tiny").to_dict()
    for change, message in [
        (lambda d: d.update(extra={}), "has unknown field extra"),
        (lambda d: d["ingest"]["filters"].update(typo=1), "preset.json.ingest.filters has unknown field typo"),
        (lambda d: d["train"].update(lr="fast"), "preset.json.train.lr must be a number, not 'fast'"),
        (lambda d: d["ingest"].update(languages="en"), "ingest.languages must be a list of strings"),
        (lambda d: d.pop("model"), "is incomplete"),
    ]:
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(HomegrownError, match=re.escape(message)):
            load_preset(path)
    path.write_text("{not json")
    with pytest.raises(HomegrownError, match="not valid JSON"):
        load_preset(path)
    older = json.loads(json.dumps(good))
    del older["serve"], older["ingest"]  # written before these sections existed: they take their defaults
    for recipe in ("schedule", "decay_frac", "embed_lr_mult", "head_lr_mult", "z_loss"):  # from before these
        del older["train"][recipe]
    path.write_text(json.dumps(older))
    assert load_preset(path) == get_preset("tiny")


def test_resolve_preset_prefers_the_named_then_the_saved_then_the_default(tmp_path):
    saved = save_preset(apply_overrides(get_preset("tiny"), ["train.lr=0.123"]), tmp_path / "preset.json")
    assert resolve_preset(None, saved, [], "small").train.lr == 0.123  # read back whole, override kept
    assert resolve_preset(None, saved, ["sft.lr=0.5"], "small").sft.lr == 0.5
    assert resolve_preset("small", saved, [], "tiny").name == "small"
    assert resolve_preset(None, tmp_path / "absent.json", [], "tiny") == get_preset("tiny")


def test_field_docs_are_the_docstrings_under_the_fields():
    docs = field_docs(IngestConfig)
    assert docs["workers"] == "Engine tasks (Ray) run at once by ingest and packing; results do not depend on it."
    assert "holdout_fraction" not in docs  # a field without a docstring has none
    assert field_help(ServeConfig, "port", "TCP port.") == "TCP port."
    assert field_help(ServeConfig, "max_n").startswith("Largest `n`")
    with pytest.raises(KeyError, match="no field 'nope'"):
        field_help(ServeConfig, "nope")


ARCH_SWITCHES = {"qk_norm": ("true", True), "zero_init_proj": ("true", True), "logit_softcap": ("15", 15.0),
                 "mlp": ("relu2", "relu2")}
"""Issue 16's architecture switches: the `--set model.X=` text and the value it gives."""


def test_architecture_switches_are_off_in_every_preset_but_the_measured_winners_and_set_by_name():
    default = ModelConfig()
    winners = {"small": {"qk_norm"}}  # won benchmarks/ablate.py at the 10-minute budget (RESULTS)
    for name in PRESET_NAMES:
        model = get_preset(name).model
        on = {field for field in ARCH_SWITCHES if getattr(model, field) != getattr(default, field)}
        assert on == winners.get(name, set()), name
    for field, (text, value) in ARCH_SWITCHES.items():
        assert getattr(apply_overrides(get_preset("tiny"), [f"model.{field}={text}"]).model, field) == value
    assert apply_overrides(get_preset("small"), ["model.qk_norm=false"]).model.qk_norm is False


def test_switching_the_mlp_recomputes_its_width_unless_it_is_set():
    relu2 = apply_overrides(get_preset("small"), ["model.mlp=relu2"]).model
    assert relu2.ffn_hidden == 4 * relu2.d_model == 768
    assert count_params(relu2) == count_params(get_preset("small").model)
    assert apply_overrides(get_preset("small"), ["model.mlp=relu2", "model.ffn_hidden=256"]).model.ffn_hidden == 256
    assert apply_overrides(get_preset("gpt2-124m"), ["model.mlp=swiglu"]).model.ffn_hidden == 3072  # unchanged
    with pytest.raises(HomegrownError, match=r"unknown model\.mlp 'gelu'"):
        apply_overrides(get_preset("small"), ["model.mlp=gelu"])
