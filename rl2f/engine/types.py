"""Request and result records of the rollout engines, shaped like vLLM's so that switching
between the built-in engine and vLLM is one line of config.

Conventions every engine follows (the trainer relies on them):
- `CompletionOutput.logprobs[i]` is the log-probability of `token_ids[i]` under
  `log_softmax(logits / temperature)` over the FULL vocabulary, i.e. after temperature but
  before top-k / top-p truncation: exactly the quantity GRPO recomputes for its importance
  ratio. With temperature 0 (greedy) it is `log_softmax(logits)` (temperature 1).
- A stop TOKEN (end of turn) is kept at the end of `token_ids` and `logprobs`, so the student
  learns to stop, but it is not part of `text`.
- A stop STRING is not part of `text` (which ends just before it); `token_ids` keep every
  token up to and including the one that completes the stop string, so the decoded ids may
  run past `text` by the stop string and at most the tail of that last token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

from rl2f.errors import UserError


@dataclass
class SamplingParams:
    """How to sample one request (the names and meaning of vLLM's `SamplingParams`)."""

    n: int = 1  # samples per prompt; the prompt is prefilled once and fanned out
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept; 1.0 = off
    top_k: int | None = None  # tokens kept; None = off
    max_tokens: int = 64  # generated tokens at most (the stop token included)
    stop: list[str] = field(default_factory=list)  # stop strings, matched on decoded text
    stop_token_ids: list[int] = field(default_factory=list)  # added to the tokenizer's stop ids
    seed: int | None = None  # same (seed, prompt) -> same samples in any batch; mixed with
    # the prompt, so prompts sharing one seed still sample independently
    logprobs: bool = True  # return the sampling log-prob of each generated token

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        if self.n < 1:
            raise UserError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise UserError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"SamplingParams.top_k must be None (off) or >= 1, got {self.top_k}")
        if self.max_tokens < 1:
            raise UserError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise UserError("SamplingParams.stop must not contain an empty string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class CompletionOutput:
    """One sample of one request."""

    index: int  # which of the request's n samples
    text: str  # decoded generation, stop token and stop string excluded
    token_ids: list[int]  # generated ids, the stop token included (see module docstring)
    logprobs: list[float] | None  # log_softmax(logits / T)[token] per generated id, or None
    finish_reason: Literal["stop", "length"]
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    @property
    def cumulative_logprob(self) -> float | None:
        return None if self.logprobs is None else float(sum(self.logprobs))


@dataclass
class RequestOutput:
    """All samples of one prompt."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class Engine(Protocol):
    """What the episode runner, the trainer and the evaluator need of a rollout engine.

    Student requests (`use_adapter=True`) run the adapter chosen by the last `set_adapter`;
    teacher and reference requests (`use_adapter=False`) always run the base weights.
    `collective`: every `generate()` is a collective over the torchrun ranks (vLLM's
    data-parallel replicas), so every rank must make the same calls, empty where it has
    nothing to ask."""

    collective: bool

    def generate(self, prompts: Sequence[Sequence[int] | str],
                 sampling_params: "SamplingParams | Sequence[SamplingParams] | None" = None,
                 use_adapter: bool | Sequence[bool] = True) -> list[RequestOutput]: ...

    def set_adapter(self, version: int | None, path: str | Path | None = None) -> None:
        """Student requests from now on run adapter `version` (None: the base, adapter off).
        `path` is a PEFT adapter directory; the built-in engine, which shares the trainer's
        model, takes None to mean "the weights the model holds now"."""
        ...

    def sleep(self) -> None:
        """A rollout is over and training follows: give back the memory that only sampling
        uses. Built-in engine: the prefix cache (its entries are of the weights the coming
        optimiser step changes). vLLM with `sleep_mode`: its weights move to host memory and
        its KV cache is freed. The next `generate` must come after `wake()`."""
        ...

    def wake(self) -> None:
        """Undo `sleep()` before the next rollout (a no-op when awake)."""
        ...


def per_request(value, n: int, name: str) -> list:
    """A single value for all n requests, or a list with one per request."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UserError(f"{name} has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n
