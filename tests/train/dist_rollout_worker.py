"""Worker of the distributed rollout test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_rollout_worker.py CKPT OUT

The model is LoRA-wrapped and FSDP2-sharded as in training; inside `unsharded` (how the
trainer rolls out) each rank generates with the built-in engine's defaults, rank r decoding
4 + 8r tokens, so the ranks make different numbers of decode forwards. Then a second call
whose prompt extends the first dialogue (the next turn). Every torch.distributed collective
is counted; each rank writes OUT/rank{r}.json.
"""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rl2f.distributed import init_distributed, shard_model, shutdown, unsharded
from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.lora import apply_lora
from rl2f.model import load_model, load_tokenizer

COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast",
               "reduce_scatter_tensor", "reduce_scatter", "all_to_all_single", "barrier", "send", "recv")

ckpt, out = sys.argv[1:3]
d = init_distributed("cpu")
torch.manual_seed(0)
model = load_model(ckpt)
apply_lora(model, rank=4, alpha=8.0)
shard_model(model)
tokenizer = load_tokenizer(ckpt)

counts = {}


def counting(name, fn):
    def wrapper(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return fn(*args, **kwargs)
    return wrapper


for name in COLLECTIVES:
    if hasattr(dist, name):
        setattr(dist, name, counting(name, getattr(dist, name)))

with unsharded(model):
    engine = BuiltinEngine(model, tokenizer)
    at_entry = dict(counts)
    # longer than the prefix cache's 16-token blocks in either tokenizer
    prompt = tokenizer.encode("user: guess the secret number between one and nine; you have five tries, and "
                              "after each one I say whether it was too high or too low.")
    first = engine.generate([prompt], SamplingParams(n=2, max_tokens=4 + 8 * d.rank, seed=1,
                                                     stop_token_ids=[], temperature=1.0))
    steps_first = engine.last_stats.decode_steps
    feedback = tokenizer.encode(" too low, try again")
    turn2 = prompt + list(first[0].outputs[0].token_ids) + feedback
    engine.generate([turn2], SamplingParams(n=2, max_tokens=3, seed=2))
    inside = {k: v - at_entry.get(k, 0) for k, v in counts.items() if v != at_entry.get(k, 0)}
    record = {"rank": d.rank, "sync_every": engine.sync_every, "decode_steps_first": steps_first,
              "generated_first": [len(o.token_ids) for o in first[0].outputs],
              "turn2_prompt_tokens": engine.last_stats.prompt_tokens,
              "turn2_cached_tokens": engine.last_stats.cached_tokens, "feedback_tokens": len(feedback),
              "collectives_inside": inside}
done = torch.ones(1)
dist.all_reduce(done)  # both ranks left the rollout
record["ranks_done"] = int(done.item())
Path(out, f"rank{d.rank}.json").write_text(json.dumps(record))
# The sharded model's DTensors hold the process group: free them before it is destroyed, not
# in the interpreter's exit, where CI once saw gloo abort rank 0 ("terminate called without
# an active exception") after both ranks had written their records.
del engine, model
gc.collect()
shutdown(d)
