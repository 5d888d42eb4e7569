"""`homegrown dpo` against TRL's DPOTrainer: same exported model, pairs, batch order and settings, step by step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homegrown.bundle import load_chat_format
from homegrown.config import apply_overrides, get_preset
from homegrown.export.hf import export_hf
from homegrown.posttrain.dpo import PairData, dpo, dpo_train_config
from homegrown.posttrain.pairs import read_pairs
from homegrown.train.checkpoint import resolve_checkpoint

STEPS = 20
SETTINGS = ["train.threads=1", "train.dtype=fp32", "train.weight_decay=0", "train.min_lr_ratio=1.0",
            f"dpo.max_steps={STEPS}", "dpo.batch_size=2", "dpo.lr=3e-3", f"dpo.eval_every={STEPS}",
            f"dpo.ckpt_every={STEPS}", "dpo.beta=0.1"]


def write_pairs(path: Path, n: int = 12) -> Path:
    rows = [{"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"Maybe {i * 3} or so"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _close(ours: float, theirs: float) -> bool:
    """1e-3 relative; values within 1e-6 of zero (the first step's rewards, policy = reference) compare absolutely."""
    return abs(ours - theirs) <= 1e-3 * max(abs(ours), abs(theirs)) + 1e-6


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "rpo", "label_smoothing"])
def test_dpo_steps_match_trl(tiny_base, tmp_path, loss):
    from homegrown.posttrain.trl_reference import batch_order, run_trl_dpo

    extra = {"sigmoid": [], "ipo": ["dpo.loss=ipo"], "rpo": ["dpo.rpo_alpha=0.5"],
             # conservative DPO; TRL computes it as its `aot` loss, the same formula for one pair per step
             "label_smoothing": ["dpo.label_smoothing=0.2", "dpo.batch_size=1"]}[loss]
    preset = apply_overrides(get_preset("tiny"), [*SETTINGS, *extra])
    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    dpo(tiny_base, data, out, preset.dpo, preset.train, val=data, progress=False)
    ours = [json.loads(line) for line in (out / "metrics_dpo.jsonl").read_text().splitlines()]

    start = resolve_checkpoint(tiny_base / "ckpt")
    tok, chat = load_chat_format(start)
    tcfg = dpo_train_config(preset.train, preset.dpo, preset.model)
    pairs = PairData(tok, chat, read_pairs(data).pairs, tcfg.seq_len)
    theirs = run_trl_dpo(export_hf(start, tmp_path / "hf"), pairs, batch_order(pairs, tcfg, STEPS), preset.dpo,
                         tcfg, tmp_path / "trl")
    assert len(ours) == len(theirs) == STEPS
    for key in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        mismatched = [(o["step"], o[key], t[key]) for o, t in zip(ours, theirs, strict=True)
                      if not _close(o[key], t[key])]
        assert not mismatched, f"{key} differs from TRL at (step, ours, TRL): {mismatched[:5]}"
    assert ours[-1]["rewards/margins"] > 0.1  # it learned something: the comparison is not between two no-ops


def test_trl_tokenizes_our_pairs_as_we_do_up_to_the_end_of_turn(tiny_base, tmp_path):
    """TRL is fed our tokenization above; here its own (`_tokenize` through the exported tokenizer's template, as
    DPOTrainer._prepare_dataset does) is shown to give the same prompt and answer ids. The one difference: TRL's
    answer also holds what the template writes after the end-of-turn token (our template's newline), which
    homegrown leaves out of the answer, as SFT's mask does — nothing generates it."""
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, common_prefix_length

    from homegrown.posttrain.trl_reference import trl_rows

    start = resolve_checkpoint(tiny_base / "ckpt")
    tok, chat = load_chat_format(start)
    read = read_pairs(write_pairs(tmp_path / "pairs.jsonl", n=4))
    pairs = PairData(tok, chat, read.pairs, 64)
    hf_tok = AutoTokenizer.from_pretrained(export_hf(start, tmp_path / "hf"))
    for pair, ours in zip(read.pairs, trl_rows(pairs, [list(range(len(pairs)))]), strict=True):
        prompt = _tokenize(hf_tok, pair.prompt, add_generation_prompt=True)["input_ids"]
        for answer, our_ids in ((pair.chosen, ours["chosen_ids"]), (pair.rejected, ours["rejected_ids"])):
            full = _tokenize(hf_tok, pair.conversation(answer))["input_ids"]
            cut = common_prefix_length(prompt, full)
            assert full[:cut] == ours["prompt_ids"]
            theirs = full[cut:]
            assert theirs[:len(our_ids)] == our_ids and hf_tok.decode(theirs[len(our_ids):]) == "\n"
