"""Several processes under torchrun: FSDP2 sharding and the few collectives the trainer needs.

`shard_model` is the whole of the parallelism (torchtitan's parallelize in one function):
`fully_shard` on each decoder block, then on the root. The frozen base keeps its dtype (bf16
on GPU) and the LoRA parameters stay fp32, so their gradients, the reduce-scatter and the
AdamW state are fp32 too. FSDP2 works on CPU with the gloo backend (torch >= 2.6), which is
how the equivalence test runs it.

FSDP2 averages gradients over ranks; the trainer instead wants the SUM of per-rank losses
that are already divided by the global token count, so `loss_scale()` (= world size) undoes
the average. Rollouts run on every rank with the model unsharded once (`unsharded`): ranks
decode different numbers of steps, so nothing inside a rollout may make a collective (a
forward runs the root's FSDP hooks once: see CausalLM.forward). The adapter goes to vLLM and
to checkpoints with each LoRA tensor gathered alone (`rl2f.lora.adapter_tensors`), never the
base weights.

Launch: `torchrun --nproc_per_node=N -m rl2f.cli train ...` (nccl on GPUs, gloo on CPU).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref.startswith("cuda:"):
        device = torch.device(device_pref)
    elif want_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_pref if device_pref not in ("auto",) else "cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local, device)


def shutdown(d: Dist) -> None:
    """Leave the process group once every rank is done with it. The barrier first: a rank
    that tears its gloo connections down while a peer still waits on its last message aborts
    that peer ("terminate called without an active exception", exit -6) after a run that
    succeeded."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: each decoder block, then the root; `hidden_states` runs FSDP's hooks like forward."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in model.model.layers:
        fully_shard(layer)
    # The root's parameters (embeddings, final norm, tied head) are needed again right away.
    fully_shard(model, reshard_after_forward=False)
    # The trainer and the engine call hidden_states(), not forward(): hook it the same way.
    register_fsdp_forward_method(model, "hidden_states")
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: torch.nn.Module):
    """Full parameters on every rank inside the block (collective on entry and exit), with no
    collective in between: for rollouts and for writing the adapter. No-op when not sharded."""
    if not is_sharded(model):
        yield model
        return
    mods = _fsdp_modules(model)
    for m in mods:
        m.unshard()
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


def loss_scale(d: Dist, model: torch.nn.Module) -> float:
    """Factor on each rank's loss so that FSDP's gradient average becomes a sum."""
    return float(d.world_size) if (d.enabled and is_sharded(model)) else 1.0


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum over ranks (fp64 so token counts stay exact)."""
    if not d.enabled:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int, d: Dist) -> int:
    if not d.enabled:
        return int(value)
    t = torch.tensor([value], dtype=torch.int64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj, d: Dist) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] outside torch.distributed."""
    if not d.enabled:
        return [obj]
    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def max_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Each value's maximum over ranks (a key missing on a rank is skipped there): the
    fullest rank sets the memory limit and the slowest the pace, so rank 0's own numbers say
    little of a step. One object all-gather; every rank must call it."""
    gathered = gather_objects(dict(values), d)
    keys = dict.fromkeys(k for g in gathered for k in g)
    return {k: max(g[k] for g in gathered if k in g) for k in keys}


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank: one all-reduce over the default group, so every rank
    must call it at the same point; `flag` itself outside torch.distributed. For engines whose
    every `generate()` is a collective (vLLM data-parallel replicas): a loop goes on while
    any rank has work, the others making the same calls with nothing in them."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    # the callers (episode runner, teacher) hold no Dist: the default group's, with nccl's device
    cuda = dist.get_backend() == "nccl"
    here = Dist(dist.get_rank(), dist.get_world_size(),
                device=torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"))
    return all_reduce_max(int(bool(flag)), here) > 0


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
