"""Worker of the adapter hand-off test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_handoff_worker.py CKPT OUT

A LoRA-wrapped, FSDP2-sharded model (as in training, after a step: parameters sharded).
Counts the bytes every all-gather produces (a dispatch mode sees FSDP's c10d gathers and
DTensor's functional ones alike) while (a) `save_adapter` gathers and writes the adapter the
way the hand-off and checkpoints do, and (b) `unsharded` gathers the whole model, the old
way, as a check that the counter sees FSDP's gathers. Rank 0 writes both adapters and OUT/result.json.
"""
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rl2f.distributed import barrier, init_distributed, shard_model, shutdown, unsharded
from rl2f.lora import apply_lora, lora_parameters, lora_layers, save_adapter
from rl2f.model import load_model


class GatheredBytes(TorchDispatchMode):
    """Sums the output bytes of every all-gather op dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if "all_gather" in name or "allgather" in name:
            self.calls += 1
            # c10d ops write into their first argument (a tensor or a list of lists of
            # tensors); functional ones return the gathered tensor
            target = out if "_c10d_functional" in name else args[0]
            flat = [target]
            while flat and isinstance(flat[0], (list, tuple)):
                flat = [t for group in flat for t in group]
            self.bytes += sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))
        return out


ckpt, out = sys.argv[1:3]
d = init_distributed("cpu")
torch.manual_seed(0)
model = load_model(ckpt)
apply_lora(model, rank=4, alpha=8.0)
with torch.no_grad():
    for p in lora_parameters(model):
        p.add_(torch.randn_like(p) * 0.01)  # a trained adapter: B nonzero too
base_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
lora_bytes = sum(p.numel() * p.element_size() for p in lora_parameters(model))
shard_model(model)

with GatheredBytes() as handoff:
    save_adapter(model, Path(out) / "adapter-only", write=d.is_main)  # as hand-off and checkpoints do
barrier(d)
with GatheredBytes() as whole:
    with unsharded(model):
        if d.is_main:
            save_adapter(model, Path(out) / "unsharded")
barrier(d)
if d.is_main:
    Path(out, "result.json").write_text(json.dumps({
        "base_bytes": base_bytes, "lora_bytes": lora_bytes, "n_lora_tensors": 2 * len(list(lora_layers(model))),
        "handoff_bytes": handoff.bytes, "handoff_calls": handoff.calls,
        "unsharded_bytes": whole.bytes, "unsharded_calls": whole.calls}))
shutdown(d)
