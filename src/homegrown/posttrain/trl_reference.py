"""TRL's DPOTrainer on the same model, pairs, batches and settings as a homegrown DPO run: the implementation we
did not write that `homegrown dpo` is checked against (tests/posttrain/test_dpo_trl.py, benchmarks/dpo_trl.py).

TRL gets the model exported to transformers format and our tokenization (prompt ids, then each answer's ids up to
its end-of-turn token): TRL's own tokenization also counts what a chat template writes after the end of turn, a
difference the test checks separately. Its sampler is made sequential over the pairs laid out in our batch order,
its schedule constant, and AdamW, weight decay and gradient clipping are set to ours. Needs `trl` (a test
dependency, not a runtime one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homegrown.config import DPOConfig, TrainConfig
from homegrown.posttrain.dpo import PairData
from homegrown.train.loop import step_generator


def batch_order(data: PairData, tcfg: TrainConfig, steps: int) -> list[list[int]]:
    """The pair indices each of the first `steps` steps of a homegrown DPO run trains on."""
    return [data.sample_indices(tcfg.batch_size, step_generator(tcfg.seed, step, 0)) for step in range(steps)]


def trl_rows(data: PairData, order: list[list[int]]) -> list[dict[str, list[int]]]:
    """Pre-tokenized TRL rows in training order: prompt_ids, chosen_ids, rejected_ids (answer + end of turn)."""
    rows = []
    for idx in (i for batch in order for i in batch):
        it = data.items[idx]
        c_start, c_end = _span(it.chosen_mask)
        r_start, r_end = _span(it.rejected_mask)
        if it.chosen[:c_start] != it.rejected[:r_start]:
            raise ValueError(f"pair {data.pairs[idx].where}: chosen and rejected have different prompt tokens")
        rows.append({"prompt_ids": it.chosen[:c_start], "chosen_ids": it.chosen[c_start:c_end],
                     "rejected_ids": it.rejected[r_start:r_end]})
    return rows


def _span(mask: list[int]) -> tuple[int, int]:
    ones = [i for i, m in enumerate(mask) if m]
    return ones[0], ones[-1] + 1


def _trl_loss(cfg: DPOConfig, tcfg: TrainConfig) -> str:
    """TRL's loss_type for ours. Conservative DPO (sigmoid with label smoothing ε: −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ))
    is not TRL's `sigmoid` in TRL 1.x, which ignores `label_smoothing`; its `aot` loss is exactly that formula on
    the batch's Δ sorted, which for one pair per step is Δ itself — so the comparison needs batch size 1."""
    if cfg.loss == "sigmoid" and cfg.label_smoothing:
        if tcfg.batch_size != 1:
            raise ValueError("label smoothing is compared with TRL's `aot` loss, which equals conservative DPO only "
                             f"for one pair per step, not {tcfg.batch_size}")
        return "aot"
    return cfg.loss


def run_trl_dpo(hf_dir: Path, data: PairData, order: list[list[int]], cfg: DPOConfig, tcfg: TrainConfig,
                out_dir: Path) -> list[dict[str, Any]]:
    """TRL's per-step logs (loss, rewards/*) for the batches of `order`, trained from the model in `hf_dir`."""
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    class InOrder(DPOTrainer):
        """Already tokenized, and trained in the given order (HF's default sampler shuffles)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    torch.manual_seed(tcfg.seed)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loss_type = [_trl_loss(cfg, tcfg)] + (["sft"] if cfg.rpo_alpha else [])
    args = TRLConfig(
        output_dir=str(out_dir), per_device_train_batch_size=tcfg.batch_size, max_steps=len(order),
        learning_rate=tcfg.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=tcfg.beta1, adam_beta2=tcfg.beta2, adam_epsilon=1e-8, weight_decay=tcfg.weight_decay,
        max_grad_norm=tcfg.grad_clip, optim="adamw_torch", beta=cfg.beta, loss_type=loss_type,
        label_smoothing=cfg.label_smoothing,
        loss_weights=[1.0, cfg.rpo_alpha] if cfg.rpo_alpha else None, precompute_ref_log_probs=True,
        max_length=None, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=tcfg.seed, data_seed=tcfg.seed, dataloader_num_workers=0, disable_tqdm=True, disable_dropout=True,
    )
    trainer = InOrder(model=model, args=args, train_dataset=Dataset.from_list(trl_rows(data, order)),
                      processing_class=tokenizer)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
