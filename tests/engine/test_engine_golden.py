"""The built-in engine against its own recorded outputs: token ids, texts, finish reasons,
log-probs and work counters of calls that exercise everything the decode loop's compaction
re-selects per row (rows of different prompt lengths, temperatures, top-k/top-p, stop token
ids, stop strings and max_tokens, finishing at different steps; fan-out; several batches),
the prefix cache across a second turn, and the LoRA adapter on and off (folded, unfolded,
bf16). The goldens in tests/data/ were recorded from the engine before it was split into
phases (issue #25; commit dc21422), on the CPU with one thread; a refactor must reproduce
them.

Re-record (`python tests/engine/test_engine_golden.py`) only for an intended change of the
samples: a golden re-recorded from a broken engine pins the bug.
"""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.lora import apply_lora, lora_layers
from rl2f.model.tiny import build_tiny_model

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_GOLDEN = DATA / "engine_golden_tiny.json"
SMOLLM2_GOLDEN = DATA / "engine_golden_smollm2.json"
V = 96
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43, 44]]
# one request per prompt, each with settings of its own, so a row whose settings were
# re-selected wrongly at a compaction samples something else
MIXED = [
    SamplingParams(temperature=0, max_tokens=9),
    SamplingParams(n=3, temperature=0.8, top_k=5, max_tokens=14, seed=7, stop_token_ids=[20, 21, 22, 23]),
    SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=20, seed=8, stop=["q", "ee"]),
    SamplingParams(n=4, temperature=1.3, top_k=40, top_p=0.8, max_tokens=25, seed=9, logprobs=False,
                   stop_token_ids=[30, 31, 32, 33]),
]


class PieceTokenizer:
    """Id i decodes to a 1- or 2-character piece (a stop string can end inside a token); ids
    60..67 stop every row, so rows finish at different steps."""

    stop_ids = list(range(60, 68))
    pad_id = 0

    def encode(self, text):
        return [1 + ord(c) % (V - 2) for c in text]

    def decode(self, ids):
        return "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + (i // 26) % 2) for i in ids)


def _record(engine, prompts, params, use_adapter=True):
    """One generate call as plain JSON: every sample's fields and the call's counters."""
    outs = engine.generate(prompts, params, use_adapter=use_adapter)
    samples = [[{"token_ids": c.token_ids, "logprobs": c.logprobs, "text": c.text,
                 "finish_reason": c.finish_reason, "stop_reason": c.stop_reason} for c in r.outputs]
               for r in outs]
    stats = {k: v for k, v in vars(engine.last_stats).items() if k != "calls"}
    return {"samples": samples, "stats": stats}


def _two_turns(engine, prompts, sp, extra, use_adapter=True):
    """A first call, then each prompt extended by its first sample and `extra` (a prefix
    cache hit), beside a fresh prompt (with the first request's settings)."""
    def one_more(per_request):
        return per_request + per_request[:1] if isinstance(per_request, list) else per_request

    first = _record(engine, prompts, sp, use_adapter)
    turn2 = [p + r[0]["token_ids"] + extra for p, r in zip(prompts, first["samples"])] + [extra * 3]
    return [first, _record(engine, turn2, one_more(sp), one_more(use_adapter))]


def _with_adapter(model, seed):
    """A copy of `model` with LoRA whose B is random and nonzero (adapter on != off)."""
    model = apply_lora(copy.deepcopy(model), rank=4, alpha=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return model.eval()


def tiny_cases() -> dict:
    model = build_tiny_model("llama", vocab_size=V, seed=0)[1].eval()
    tok = PieceTokenizer()
    g = torch.Generator().manual_seed(1)
    long = [torch.randint(1, V, (n,), generator=g).tolist() for n in (40, 23, 33)]
    turn_sp = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_tokens=8, seed=1)
    lora = _with_adapter(model, seed=0)
    lora_bf16 = _with_adapter(copy.deepcopy(model).to(torch.bfloat16), seed=0)  # an fp32 adapter, a bf16 base
    return {
        # compaction at every step where a row finished
        "mixed_sync1": _record(BuiltinEngine(model, tok, sync_every=1, compact_fraction=0.01), PROMPTS, MIXED),
        # host checks every 3 steps, batches of 3 rows (n=4 split across batches)
        "mixed_sync3_batch3": _record(BuiltinEngine(model, tok, sync_every=3, max_batch_size=3), PROMPTS, MIXED),
        "two_turns": _two_turns(BuiltinEngine(model, tok, sync_every=2, compact_fraction=0.01, prefill_group_cost=8),
                                long, turn_sp, [7, 8, 9, 10, 11]),
        "lora_folded": _two_turns(BuiltinEngine(lora, tok, sync_every=1, compact_fraction=0.01),
                                  long[:2], turn_sp, [7, 8, 9], use_adapter=[True, False]),
        "lora_unfolded": _record(BuiltinEngine(lora, tok, sync_every=1, compact_fraction=0.01, fold_lora=False),
                                 PROMPTS, MIXED, use_adapter=[True, False, True, False]),
        "lora_bf16": _record(BuiltinEngine(lora_bf16, tok, sync_every=1, compact_fraction=0.01),
                             PROMPTS, MIXED, use_adapter=[True, False, True, False]),
    }


def smollm2_cases(path) -> dict:
    from rl2f.model import load_model, load_tokenizer

    model, tok = load_model(path).eval(), load_tokenizer(path)
    prompts = [tok.apply_chat([{"role": "user", "content": "Name three colours."}]),
               tok.apply_chat([{"role": "user", "content": "What is 2 + 3?"}])]
    params = [SamplingParams(n=2, temperature=0.9, top_p=0.95, top_k=50, max_tokens=10, seed=3, stop=["."]),
              SamplingParams(temperature=0, max_tokens=6)]
    return {
        "base": _two_turns(BuiltinEngine(model, tok, sync_every=2, compact_fraction=0.01), prompts, params,
                           tok.encode(" Go on.")),
        "lora": _record(BuiltinEngine(_with_adapter(model, seed=0), tok, sync_every=2, compact_fraction=0.01),
                        prompts, params[0], use_adapter=[True, False]),
    }


def _assert_same(got, want, where="") -> None:
    """Everything equal, except log-probs: within 1e-6 (round-off, should an operation move)."""
    if isinstance(want, dict) and "samples" in want:
        assert got["stats"] == want["stats"], where
        for r, (gr, wr) in enumerate(zip(got["samples"], want["samples"], strict=True)):
            for s, (gs, ws) in enumerate(zip(gr, wr, strict=True)):
                here = f"{where} request {r} sample {s}"
                assert {k: v for k, v in gs.items() if k != "logprobs"} == \
                       {k: v for k, v in ws.items() if k != "logprobs"}, here
                if ws["logprobs"] is None:
                    assert gs["logprobs"] is None, here
                else:
                    assert gs["logprobs"] == pytest.approx(ws["logprobs"], abs=1e-6), here
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where} call {i}")
    else:
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where} {k}")


@pytest.mark.usefixtures("single_thread")
def test_tiny_model_equals_golden():
    _assert_same(tiny_cases(), json.loads(TINY_GOLDEN.read_text()))


@pytest.mark.usefixtures("single_thread")
def test_smollm2_equals_golden(smollm2_dir):
    _assert_same(smollm2_cases(smollm2_dir), json.loads(SMOLLM2_GOLDEN.read_text()))


def test_goldens_exercise_what_compaction_touches():
    """The tiny goldens hold rows that stop on a token, on a string and at max_tokens, at
    several steps, and prefix-cache hits (a guard against goldens that test nothing)."""
    golden = json.loads(TINY_GOLDEN.read_text())
    rows = [c for r in golden["mixed_sync1"]["samples"] for c in r]
    assert {type(c["stop_reason"]) for c in rows if c["finish_reason"] == "stop"} == {int, str}
    assert any(c["finish_reason"] == "length" for c in rows)
    assert len({len(c["token_ids"]) for c in rows}) > 4
    assert all(case[1]["stats"]["cached_tokens"] > 0 for case in (golden["two_turns"], golden["lora_folded"]))


if __name__ == "__main__":
    from rl2f.model.gguf import model_dir

    torch.set_num_threads(1)  # as the tests run (conftest): the same float schedule
    torch.manual_seed(0)
    DATA.mkdir(exist_ok=True)
    TINY_GOLDEN.write_text(json.dumps(tiny_cases()) + "\n")
    smollm2 = model_dir("smollm2")
    if (smollm2 / "config.json").is_file():
        SMOLLM2_GOLDEN.write_text(json.dumps(smollm2_cases(smollm2)) + "\n")
    else:
        sys.exit(f"{smollm2} is missing: the SmolLM2 golden was not recorded")
