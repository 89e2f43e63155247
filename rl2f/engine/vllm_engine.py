"""The vLLM rollout engine: the fast path on GPUs, behind the built-in engine's interface.

vLLM is imported lazily (an optional extra). The student's adapter travels as a PEFT-format
directory: `set_adapter(v, dir)` makes later student requests carry
`LoRARequest(f"v{v}", v + 1, dir)`; vLLM treats a new id as a new adapter, so each version is
hot-swapped without a restart or a merge. Teacher / reference requests (use_adapter=False)
run on the base weights in the same batch.

Log-probs: the engine is started with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2),
so the returned log-prob is log_softmax(logits / T) at the sampled token, the quantity the
built-in engine returns and the trainer recomputes. vLLM applies top-k / top-p before it
takes those log-probs, so with truncation on they are of the renormalised truncated
distribution; rollouts for RL normally sample with top_p = 1 and top_k off, where the two
engines agree.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from rl2f.engine.sampling import request_seed
from rl2f.engine.types import CompletionOutput, RequestOutput, SamplingParams, per_request
from rl2f.errors import UserError


def _import_vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise UserError(
            f"the vllm engine needs vLLM, which is not importable ({e}); "
            "install it with `pip install rl2f[vllm]` or use engine kind 'builtin'"
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


class VLLMEngine:
    """`generate(prompts, SamplingParams, use_adapter)` on a vLLM `LLM` with LoRA enabled."""

    def __init__(
        self,
        model_path: str,
        tokenizer: Any = None,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.85,
        logprobs_mode: str | None = "processed_logprobs",
        **kw: Any,
    ):
        vllm, self._LoRARequest = _import_vllm()
        self._vllm = vllm
        self.tokenizer = tokenizer
        args = dict(
            model=str(model_path),
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=gpu_memory_utilization,
            **kw,
        )
        if logprobs_mode is not None:
            args["logprobs_mode"] = logprobs_mode
        try:
            self.llm = vllm.LLM(**args)
        except TypeError as e:
            if "logprobs_mode" not in str(e):
                raise
            # vLLM < 0.10.2 has no logprobs_mode: its log-probs are of the raw logits (T = 1)
            warnings.warn("this vLLM has no logprobs_mode; log-probs are at temperature 1")
            args.pop("logprobs_mode")
            self.llm = vllm.LLM(**args)
        self._lora_request = None

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
        prompts = list(prompts)
        params = per_request(sampling_params or SamplingParams(), len(prompts), "sampling_params")
        flags = per_request(use_adapter, len(prompts), "use_adapter")
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

