"""Rollout engines: `generate(prompts, SamplingParams, use_adapter) -> list[RequestOutput]`
and `set_adapter(version, path)` (the `Engine` protocol of types.py).

`builtin` runs our own model in-process (shares the trainer's weights, so a new adapter is
live as soon as the optimizer steps); `vllm` is the fast path on GPUs and takes the adapter
as a PEFT directory, hot-swapped per version (vllm itself is imported only when that engine
is built). Both speak vLLM's request/response shape.
"""
from __future__ import annotations

from typing import Any, Literal

from rl2f.engine.builtin import BuiltinEngine
from rl2f.engine.types import CompletionOutput, Engine, RequestOutput, SamplingParams
from rl2f.engine.vllm_engine import VLLMEngine
from rl2f.errors import UserError
from rl2f.model import load_model, load_tokenizer

__all__ = [
    "BuiltinEngine",
    "CompletionOutput",
    "Engine",
    "RequestOutput",
    "SamplingParams",
    "VLLMEngine",
    "make_engine",
]


def make_engine(
    kind: Literal["builtin", "vllm"],
    *,
    model: Any = None,
    tokenizer: Any = None,
    model_path: str | None = None,
    **kw: Any,
) -> Engine:
    """Build an engine. builtin: pass the (shared) `model` and `tokenizer`, or a
    `model_path` to load both; vllm: `model_path` (defaults to the checkpoint `model` was
    loaded from). Extra keywords go to the engine's constructor."""
    if kind == "builtin":
        if model is None:
            if model_path is None:
                raise UserError("make_engine('builtin') needs model= or model_path=")
            model = load_model(model_path)
        if tokenizer is None:
            tokenizer = load_tokenizer(model_path or model.config.name_or_path)
        return BuiltinEngine(model, tokenizer, **kw)
    if kind == "vllm":
        if model_path is None and model is not None:
            model_path = getattr(model.config, "name_or_path", None)
        if not model_path:
            raise UserError("make_engine('vllm') needs model_path= (a Hugging Face checkpoint dir)")
        return VLLMEngine(model_path, tokenizer, **kw)
    raise UserError(f"unknown engine kind {kind!r}; expected 'builtin' or 'vllm'")
