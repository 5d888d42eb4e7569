"""`train.compile` under FSDP2 compiles each block's forward: same numbers, same state_dict, one graph for all blocks.

Single process, no process group: what is checked here is the compile itself; tests/train/test_distributed.py
runs the sharded loop. A per-block recompile would hit dynamo's limit (8) on deeper models and silently run
eager, so recompiling is made an error and the number of graphs is counted. Also: a machine without a C++
compiler is refused before training starts.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from homegrown.config import ModelConfig, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.train.distributed import compile_blocks
from homegrown.train.loop import train


def _model(activation_checkpointing: bool) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=32,
                                    ffn_hidden=64))
    model.activation_checkpointing = activation_checkpointing
    return model


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_compiled_blocks_match_eager_with_one_graph(activation_checkpointing: bool):
    torch.set_num_threads(1)
    eager, compiled = _model(activation_checkpointing), _model(activation_checkpointing)
    keys = list(compiled.state_dict())
    compile_blocks(compiled)
    assert list(compiled.state_dict()) == keys  # no `_orig_mod.`: checkpoints and export keep their names

    torch._dynamo.reset()
    counters.clear()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            for model in (eager, compiled):
                model.zero_grad()
                model(idx, targets).backward()
    assert counters["stats"]["unique_graphs"] == 1  # one Block.forward graph shared by all 4 blocks
    torch.testing.assert_close(compiled(idx, targets), eager(idx, targets), rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compile_without_a_cpp_compiler_is_refused_before_training(tiny_run, tmp_path):
    """`small` compiles by default; a CPU machine without g++ gets the way out, not Inductor's traceback mid-step."""
    preset = apply_overrides(get_preset("tiny"), ["train.threads=1", "train.dtype=fp32", "train.compile=true"])
    run = tmp_path / "run"
    with (inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}),
          pytest.raises(HomegrownError, match=r"C\+\+ compiler.*--set train.compile=false")):
        train(preset.model, preset.train, tiny_run / "shards", run, tiny_run / "tokenizer.json", progress=False)
    assert not (run / "ckpt").exists()
