"""The memory plan: per-rank peak memory by phase of a training run, from the model's
config.json and the run config, before anything is loaded (`rl2f plan-memory`).

What it counts is what rl2f's own code allocates, phase by phase, at the longest dialogue the
config allows (so it is an upper bound for a run of that config):
- resident on every rank all the time: the base weights (1/world of them under FSDP2), the
  fp32 adapter, and after the first step AdamW's two fp32 moments;
- rollout, built-in engine: under FSDP2 a full unsharded copy of the weights (the engine
  samples with the trainer's model and no collective: `rl2f.distributed.unsharded`); in
  fp32 on one process, the adapter folded into a copy of every adapted weight; the KV cache
  of one batch of rows, its copy when finished rows are dropped, the prefix cache and the
  decode logits;
- rollout, vLLM: vLLM's own copy of the weights and its KV cache: on a GPU the whole
  `gpu_memory_utilization` share it reserves, resident while training too unless
  `rollout.vllm_sleep` puts it to sleep (weights to host memory, KV cache freed);
- train: one micro-batch's saved activations (all layers' without gradient checkpointing,
  the layer inputs and one layer's with it, as on CUDA), the fp32 folded weights the LoRA
  backward keeps, FSDP2's gathered root and two gathered layers, the fused log-prob
  kernel's logits block, the adapter's gradients;
- optimiser: gradients and the moments.

On the CPU the same tensors live in RAM; `benchmarks/bench_memory_plan.py` checks the plan
against the peak of live tensor bytes measured by torch's profiler in each phase of a real
step. Not counted: the CUDA context and allocator fragmentation (the `reserve` the plan adds
on a GPU), and Python objects (tokenizer, episodes).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rl2f.config import LORA_SHORT_TARGETS, RunConfig
from rl2f.errors import UserError
from rl2f.model.config import ModelConfig, read_config

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINE_MAX_ROWS = 64  # the built-in engine's max_batch_size: rows decoded together
CUDA_RESERVE = 2 * GiB  # CUDA context, NCCL buffers, allocator fragmentation (not planned in detail)
VLLM_ASLEEP = 1 * GiB  # what a sleeping vLLM keeps on the GPU (CUDA graphs, its context)
TEMPLATE_TOKENS = 16  # chat-template tokens around one message


@dataclasses.dataclass
class Shapes:
    """The sizes the plan is evaluated at. `worst_case` derives them from a config and two
    assumptions about the task (the longest first prompt, the longest teacher message); the
    benchmark passes the sizes it observed in a measured step instead."""

    rows: int  # sequences the built-in engine decodes together (one KV cache)
    context_tokens: int  # columns of that KV cache: the longest prompt + its generation budget
    prefill_tokens: int  # tokens (rows x columns, padding included) of the largest prefill forward
    kept_tokens: int  # tokens of the dialogues the prefix cache is asked to keep
    micro_tokens: int  # tokens (padding included) of the largest training micro-batch

    @classmethod
    def worst_case(cls, cfg: RunConfig, prompt_tokens: int = 256, feedback_tokens: int = 0) -> "Shapes":
        """Every attempt uses max_new_tokens, every teacher message `feedback_tokens` (0 =
        rollout.teacher_max_new_tokens + TEMPLATE_TOKENS), every micro-batch is full."""
        r, t = cfg.rollout, cfg.train
        turns = 1 if t.method == "rlvr" else r.max_turns
        feedback = feedback_tokens or r.teacher_max_new_tokens + TEMPLATE_TOKENS
        dialogue = prompt_tokens + turns * (r.max_new_tokens + TEMPLATE_TOKENS) + (turns - 1) * feedback
        rows = min(r.problems_per_batch * (1 if t.method == "sft" else r.group_size), ENGINE_MAX_ROWS)
        # the LLM teacher's prompt holds the whole dialogue, and none of it is cached
        prefill = rows * (dialogue if r.teacher == "llm" and turns > 1 else prompt_tokens)
        return cls(rows=rows, context_tokens=dialogue, prefill_tokens=prefill, kept_tokens=rows * dialogue,
                   micro_tokens=t.micro_batch * dialogue)


def kv_bytes_per_token(mc: ModelConfig, dtype: str) -> int:
    """Keys and values of one token in every layer."""
    return 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * DTYPE_BYTES[dtype]


def prefix_cache_bytes(cfg: RunConfig, mc: ModelConfig) -> int:
    """The built-in engine's prefix-cache limit: `rollout.prefix_cache_mb`, or, left out,
    what the longest dialogues (`Shapes.worst_case`) of the larger batch, a rollout's
    (problems_per_batch x group_size) or an evaluation's (eval.batch_size x
    samples_per_problem), hold in this model's keys/values. A fixed default fits one model
    only: 256 MB held a batch of the tiny model's dialogues, not of SmolLM2's."""
    if cfg.rollout.prefix_cache_mb is not None:
        return cfg.rollout.prefix_cache_mb << 20
    r = cfg.rollout
    rows = max(r.problems_per_batch * r.group_size, cfg.eval.batch_size * cfg.eval.samples_per_problem)
    return rows * Shapes.worst_case(cfg).context_tokens * kv_bytes_per_token(mc, cfg.model.dtype)


@dataclasses.dataclass
class ModelSizes:
    """Parameter counts of our decoder for a config, counted on the meta device."""

    params: int  # base parameters (a tied head counted once)
    root_params: int  # outside the decoder layers: embeddings, final norm, untied head
    layer_params: int  # one decoder layer
    adapted_params: int  # base parameters of the Linear layers LoRA wraps
    lora_params: int  # the adapter's A and B

    @classmethod
    def of(cls, mc: ModelConfig, cfg: RunConfig) -> "ModelSizes":
        import torch

        from rl2f.model.modeling import CausalLM

        with torch.device("meta"):
            model = CausalLM(mc)
        model.tie_weights()
        targets = {LORA_SHORT_TARGETS.get(t, t) for t in cfg.lora.targets}
        params = sum(p.numel() for p in model.parameters())
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        adapted = lora = 0
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                adapted += m.weight.numel()
                lora += cfg.lora.rank * (m.in_features + m.out_features)
        return cls(params, params - mc.num_hidden_layers * layer, layer, adapted, lora)


@dataclasses.dataclass
class Phase:
    name: str
    items: dict[str, int]  # what is live at the phase's peak, in bytes

    @property
    def total(self) -> int:
        return sum(self.items.values())


@dataclasses.dataclass
class MemoryPlan:
    world_size: int
    device: str  # "cuda" or "cpu"
    device_bytes: int | None  # per GPU (or the machine's RAM); None = not checked
    shapes: Shapes
    phases: list[Phase]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    def headroom(self) -> int | None:
        return None if self.device_bytes is None else self.device_bytes - self.peak.total

    def as_dict(self) -> dict:
        return {"world_size": self.world_size, "device": self.device, "device_bytes": self.device_bytes,
                "shapes": dataclasses.asdict(self.shapes), "peak_phase": self.peak.name,
                "peak_bytes": self.peak.total, "headroom_bytes": self.headroom(),
                "phases": {p.name: {"total": p.total, **p.items} for p in self.phases}, "notes": self.notes}

    def table(self) -> str:
        """The plan as text: one block per phase, GiB per item."""
        sh = self.shapes
        unit, name = (GiB, "GiB") if self.peak.total >= 4 * GiB else (2**20, "MiB")
        lines = [f"memory plan per rank: {self.world_size} rank(s) on {self.device}; {sh.rows} rollout rows of "
                 f"{sh.context_tokens} tokens, micro-batches of {sh.micro_tokens} tokens"]
        for p in self.phases:
            lines.append(f"{p.name:<42} {p.total / unit:10.2f} {name}")
            lines += [f"  {k:<40} {v / unit:10.2f}" for k, v in p.items.items() if v]
        lines += [f"note: {n}" for n in self.notes]
        peak = self.peak
        if self.device_bytes is not None:
            room = self.headroom()
            verdict = (f"fits: peak {peak.total / GiB:.2f} GiB ({peak.name}) of {self.device_bytes / GiB:.1f} GiB, "
                       f"{room / GiB:.2f} GiB to spare") if room >= 0 else \
                (f"DOES NOT FIT: peak {peak.total / GiB:.2f} GiB ({peak.name}) exceeds {self.device_bytes / GiB:.1f} "
                 f"GiB by {-room / GiB:.2f} GiB")
            lines.append(verdict)
        return "\n".join(lines)


def plan_memory(cfg: RunConfig, mc: ModelConfig, world_size: int = 1, device: str = "cuda",
                device_bytes: int | None = None, shapes: Shapes | None = None,
                gradient_checkpointing: bool | None = None) -> MemoryPlan:
    """Per-rank peak bytes of each phase of a GRPO or SFT step of `cfg` on model `mc`, with
    `world_size` FSDP2 ranks on `device` ("cuda" or "cpu"). `gradient_checkpointing` defaults
    to what `rl2f.run.build_run` does: on for CUDA, off on the CPU."""
    if device not in ("cuda", "cpu"):
        raise UserError(f"plan-memory: device must be cuda or cpu, got {device!r}")
    if world_size < 1:
        raise UserError(f"plan-memory: the number of ranks must be >= 1, got {world_size}")
    shapes = shapes or Shapes.worst_case(cfg)
    ckpt = device == "cuda" if gradient_checkpointing is None else gradient_checkpointing
    r, t = cfg.rollout, cfg.train
    s = DTYPE_BYTES[cfg.model.dtype]
    fp32 = cfg.model.dtype == "float32"
    sizes = ModelSizes.of(mc, cfg)
    W = world_size
    L, H, I = mc.num_hidden_layers, mc.hidden_size, mc.intermediate_size
    q_width, kv_width = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim

    weights = sizes.params * s
    lora = sizes.lora_params * 4
    lora_shard = _ceil_div(lora, W)  # the adapter, its gradient and each AdamW moment, per rank
    resident = {"base weights" + (" (1/world)" if W > 1 else ""): _ceil_div(weights, W),
                "adapter (fp32)": lora_shard}
    adam = {"AdamW moments (fp32)": 2 * lora_shard}
    if device == "cuda":
        resident["CUDA context, allocator reserve"] = CUDA_RESERVE
    phases = []

    # --- rollout
    rows = shapes.rows
    kv_per_token = kv_bytes_per_token(mc, cfg.model.dtype)
    vllm, notes = {}, []
    if r.engine == "builtin":
        rollout = {}
        if W > 1:
            rollout["unsharded weights (FSDP2)"] = weights + lora
        elif fp32:
            rollout["folded adapter weights"] = sizes.adapted_params * 4
        kv = rows * shapes.context_tokens * kv_per_token
        rollout["KV cache"] = kv
        rollout["prefix cache"] = min(prefix_cache_bytes(cfg, mc), shapes.kept_tokens * kv_per_token)
        # the largest of what never coexists: a prefill's activations (before decoding), the
        # copy made when finished rows are dropped (at most 3/4 of the rows remain), the
        # sampler's logits
        transient = {"prefill activations": shapes.prefill_tokens * (3 * I + 4 * H + 2 * q_width) * s,
                     "KV cache compaction copy": kv * 3 // 4,
                     "decode logits (fp32)": 3 * rows * mc.vocab_size * 4}
        name = max(transient, key=transient.get)
        rollout[f"transient: {name}"] = transient[name]
    else:
        if device == "cuda":
            reserved = int(r.vllm_gpu_memory_utilization * device_bytes) if device_bytes else weights
            vllm = {"vLLM (gpu_memory_utilization share)": reserved}
            # vLLM holds the whole model (no FSDP); its KV cache gets the rest of its share, and
            # keeps only the window of a sliding-window layer
            columns = sum(shapes.context_tokens if kind != "sliding_attention" else
                          min(shapes.context_tokens, mc.sliding_window) for kind in mc.layer_types)
            room, need = reserved - weights, rows * columns * 2 * kv_width * s
            notes.append(f"vLLM's share leaves its KV cache at most {room / GiB:.1f} GiB after its "
                         f"{weights / GiB:.1f} GiB of weights; {rows} rows at their longest need {need / GiB:.1f} GiB "
                         f"({'fits' if need <= room else 'vLLM queues the rows that do not fit'})")
        else:
            kv_gib = r.vllm_kv_cache_gib or 2.0
            vllm = {"vLLM weights": weights, "vLLM KV cache": int(kv_gib * GiB)}
        rollout = dict(vllm)
        if t.method == "sft" and t.sft_data:  # no engine is built
            vllm = {}
        elif r.vllm_sleep:
            vllm = {"vLLM asleep": VLLM_ASLEEP}
    if not (t.method == "sft" and t.sft_data):  # SFT on a file of dialogues samples nothing
        phases.append(Phase("rollout", {**resident, **(adam if t.method != "sft" else {}), **rollout}))

    # --- train: one micro-batch forward and backward
    N = shapes.micro_tokens
    per_token_layer = _layer_activation_bytes(mc, s, cfg.lora.rank, len(cfg.lora.targets), device)
    train = {}
    if W > 1:
        train["FSDP2 gathered root + 2 layers"] = (sizes.root_params + 2 * sizes.layer_params) * s
    if fp32:  # _FoldedLoRA keeps W + sBA for its backward: every layer's without checkpointing
        per_layer_folded = sizes.adapted_params * 4 // L
        train["folded adapter weights (LoRA backward)"] = per_layer_folded * (1 if ckpt else L)
    if ckpt:
        train["activations: layer inputs (checkpointed)"] = N * L * H * s
        train["activations: one layer recomputed"] = N * per_token_layer
    else:
        train["activations: all layers"] = N * L * per_token_layer
    train["backward: one layer's gradients"] = N * per_token_layer
    from rl2f.kernels.linear_token_logprobs import CHUNK_ELEMS  # the fused head's logits block

    block = min(N * mc.vocab_size, CHUNK_ELEMS[device])
    train["final hidden + log-prob block"] = N * H * (s + 4) + 2 * block * 4
    if t.beta > 0:
        train["reference forward (beta > 0)"] = N * (per_token_layer + H * s)
    train["adapter gradients (fp32)"] = lora_shard
    phases.append(Phase("train", {**resident, **adam, **vllm, **train}))

    # --- optimiser step
    optim = {"adapter gradients (fp32)": lora_shard}
    phases.append(Phase("optim", {**resident, **adam, **vllm, **optim}))
    return MemoryPlan(W, device, device_bytes, shapes, phases, notes)


def _layer_activation_bytes(mc: ModelConfig, s: int, rank: int, n_targets: int, device: str) -> int:
    """Bytes one decoder layer saves for backward, per token: the norms' inputs and outputs,
    q/k/v after RoPE, the attention output and its copy into o_proj, the gated MLP's gate,
    activation, up and product, the LoRA rank states (fp32) and the attention's row stats."""
    H, I = mc.hidden_size, mc.intermediate_size
    q_width, kv_width = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim
    norms = (8 if mc.sandwich_norm else 4) * H
    attention = q_width + 2 * kv_width + 2 * q_width
    if device == "cuda":  # the GPU kernel under a padding mask takes (and keeps) K/V expanded to every head
        attention += 2 * (q_width - kv_width)
    if mc.qk_norm:
        attention += q_width + kv_width
    mlp = 4 * I
    return (norms + attention + mlp) * s + n_targets * rank * 4 + mc.num_attention_heads * 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def model_config_for(cfg: RunConfig, model_config: str | Path | None = None) -> ModelConfig:
    """The model config the plan is made for: a config.json file or a checkpoint directory
    given on its own, else model.path's, else the embedded tiny model's."""
    if model_config is not None:
        path = Path(model_config).expanduser()
        if path.is_file():
            from rl2f.model.config import _read_json, parse_hf_config

            return parse_hf_config(_read_json(path), str(path.parent), where=str(path))
        return read_config(path)
    if cfg.model.path and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path: {cfg.model.path} has no config.json (not downloaded yet?): give the "
                        "model's config.json to plan for (plan-memory --model-config FILE)")
    from rl2f.model.tiny import checkpoint_dir

    return read_config(checkpoint_dir(cfg.model.path, cfg.model.tiny_family, cfg.model.tiny_seed))


def over_memory_message(cfg: RunConfig, mc: ModelConfig, world_size: int, device_bytes: int) -> str | None:
    """What to tell a user whose run's planned peak exceeds the GPU, before anything loads;
    None when it fits. A warning, not a refusal: the plan assumes every dialogue at its longest."""
    plan = plan_memory(cfg, mc, world_size, "cuda", device_bytes)
    room = plan.headroom()
    if room >= 0:
        return None
    peak = plan.peak
    largest = ", ".join(f"{k} {v / GiB:.1f}" for k, v in sorted(peak.items.items(), key=lambda kv: -kv[1])[:3])
    return (f"the memory plan puts the {peak.name} phase at {peak.total / GiB:.1f} GiB per GPU, "
            f"{-room / GiB:.1f} GiB more than this GPU's {device_bytes / GiB:.1f} GiB (largest: {largest} GiB), "
            f"with dialogues at their longest ({plan.shapes.context_tokens} tokens); `rl2f plan-memory` "
            "shows every item. Fewer rollout rows (rollout.problems_per_batch), a smaller train.micro_batch, "
            "more GPUs or rollout.engine = 'vllm' with rollout.vllm_sleep lower it")
