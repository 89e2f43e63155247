"""Rollout throughput: the built-in engine vs transformers' `generate` vs vLLM, same weights.

Every provider loads one checkpoint directory (random weights written here: a tiny Llama, and
on a GPU also a Llama-3.2-1B-shaped model), samples at temperature 1 with no stop token
(every row runs exactly its token budget) and reports generated tokens per second. Cases:
  distinct:  `--batch` different prompts, one sample each;
  fanout:    `--batch / --group` prompts, `--group` samples each (GRPO's shape; the built-in
             engine prefills each prompt once, transformers repeats it per sample);
  multiturn: `--dialogues` dialogues of `--turns` turns, `--turn-tokens` new tokens per turn,
             `--feedback-tokens` appended after each turn (the teacher's reply), the whole
             dialogue submitted each turn as the episode runner does. Per turn it reports the
             tokens submitted and the tokens PREFILLED: for our engine and transformers,
             counted by a forward hook on the embedding (calls of more than one position are
             prefill, one-position calls are decode steps); for vLLM, prompt tokens minus
             its reported prefix-cache hits (`num_cached_tokens`). An engine that reuses a
             dialogue's past prefills only the new tokens, so its count stays flat per turn.
Providers: builtin (rl2f's engine), hf_generate (transformers), vllm (where `vllm` imports;
else recorded as skipped with the reason). Each provider is warmed up once, then `--rounds`
rounds run every provider once per case, in an order that flips each round; results are the
median and spread over rounds, and the speed-up of builtin over each peer is the median (and
min, max) of the per-round ratios.

    python -m benchmarks.bench_engine                          # CPU: tiny model
    python -m benchmarks.bench_engine --configs tiny,1b        # GPU (the default there)
    python -m benchmarks.bench_engine --rounds 5 --cases distinct,fanout,multiturn

The last line of output is one JSON object; it is also written to
benchmarks/results/engine-<device>.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.device import device_slug
from benchmarks.shapes import LLAMA_1B
from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.model import CausalLM, load_model, parse_hf_config
from rl2f.model.tiny import init_tiny_weights, tiny_config, write_checkpoint

CASES = ("distinct", "fanout", "multiturn")
PROVIDERS = ("builtin", "hf_generate", "vllm")


class _NoStopTokenizer:
    """The engine's tokenizer needs: no stop ids, so every row runs the full budget."""

    stop_ids: list[int] = []
    pad_id = 0

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens=True):
        return ""


def write_model(out: Path, name: str, seed: int = 0) -> Path:
    if name == "tiny":
        hf = tiny_config("llama", vocab_size=512)
    elif name == "1b":
        hf = tiny_config("llama", **LLAMA_1B)
    else:
        raise SystemExit(f"unknown config {name!r} (tiny, 1b)")
    with torch.device("meta"):
        model = CausalLM(parse_hf_config(hf, name_or_path=name))
    model.to_empty(device="cpu")
    model.tie_weights()
    init_tiny_weights(model, seed)
    return write_checkpoint(out / name, hf, model)


# --------------------------------------------------------------------------- providers
class PrefillCounter:
    """Tokens through an embedding in calls of more than one position: the prefill work
    (left padding included: it is computed too)."""

    def __init__(self, embedding: torch.nn.Module):
        self.tokens = 0
        embedding.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        ids = inputs[0]
        if ids.dim() == 2 and ids.shape[1] > 1:
            self.tokens += ids.numel()


class Builtin:
    """rl2f's engine; `generate` returns the new token ids per prompt, per sample."""

    def __init__(self, path, device, dtype, max_batch):
        self.model = load_model(path, dtype=dtype, device=device)
        self.engine = BuiltinEngine(self.model, _NoStopTokenizer(), max_batch_size=max_batch)
        self.prefill = PrefillCounter(self.model.model.embed_tokens)
        self.prefill_source = "forward hook on the embedding"

    def reset(self):
        self.engine.release()  # the prefix cache starts empty, as the other providers' do

    def generate(self, prompts, n, new_tokens):
        sp = SamplingParams(n=n, temperature=1.0, max_tokens=new_tokens, seed=0)
        return [[c.token_ids for c in o.outputs] for o in self.engine.generate(prompts, sp)]


class HFGenerate:
    """transformers' `generate` on left-padded prompts, `num_return_sequences` samples each."""

    def __init__(self, path, device, dtype, max_batch):
        from transformers import AutoModelForCausalLM

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        self.prefill = PrefillCounter(self.model.get_input_embeddings())
        self.prefill_source = "forward hook on the embedding"

    def reset(self):
        pass  # transformers keeps nothing between calls

    def generate(self, prompts, n, new_tokens):
        T = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                      top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, num_return_sequences=n, pad_token_id=0)
        new = out[:, T:].tolist()
        return [new[i * n:(i + 1) * n] for i in range(len(prompts))]


class VLLM:
    """vLLM's offline `LLM` with its prefix cache on (its default), token ids in and out."""

    def __init__(self, path, device, dtype, max_batch):
        import vllm

        self.vllm = vllm
        kw = dict(gpu_memory_utilization=0.3) if device.type == "cuda" else {}
        self.llm = vllm.LLM(model=str(path), dtype=str(dtype).removeprefix("torch."), seed=0,
                            skip_tokenizer_init=True, enable_prefix_caching=True,
                            max_num_seqs=max_batch, **kw)
        self.prefill = self  # counts below, from vLLM's own cache report
        self.tokens = 0
        self.prefill_source = "prompt tokens minus vLLM's num_cached_tokens"

    def reset(self):
        self.llm.reset_prefix_cache()

    def generate(self, prompts, n, new_tokens):
        sp = self.vllm.SamplingParams(n=n, temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens,
                                      ignore_eos=True, detokenize=False, seed=0)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        self.tokens += sum(len(o.prompt_token_ids) - (o.num_cached_tokens or 0) for o in outs)
        return [[list(c.token_ids) for c in o.outputs] for o in outs]


def make_providers(names, path, device, dtype, max_batch) -> dict:
    """name -> provider object, or the reason it cannot run here."""
    out = {}
    for name in names:
        cls = {"builtin": Builtin, "hf_generate": HFGenerate, "vllm": VLLM}.get(name)
        if cls is None:
            raise SystemExit(f"unknown provider {name!r} ({', '.join(PROVIDERS)})")
        module = {"hf_generate": "transformers", "vllm": "vllm"}.get(name)
        if module and importlib.util.find_spec(module) is None:
            out[name] = f"{module} is not installed"
            continue
        try:
            out[name] = cls(path, device, dtype, max_batch)
        except Exception as e:  # a peer that will not start here must not sink the others
            out[name] = f"could not start: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


# --------------------------------------------------------------------------- cases
def make_prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    """`count` random prompts with lengths uniform in [length/2, length]."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(1, length // 2), length + 1, (count,), generator=gen).tolist()
    return [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in lens]


def one_shot(provider, prompts, n, new_tokens, device) -> dict:
    # Every timed run starts with an empty prefix cache: repeated rounds on the same prompts
    # must not turn into cache hits for the providers that keep one.
    provider.reset()
    secs = harness.wall_s(lambda: provider.generate(prompts, n, new_tokens), device)
    return {"tokens_per_s": len(prompts) * n * new_tokens / secs, "seconds": secs}


def multiturn(provider, dialogues, opts, vocab, device) -> dict:
    """Play the dialogues turn by turn; per turn: tokens submitted, prefilled, seconds."""
    gen = torch.Generator().manual_seed(1)
    dialogues = [list(d) for d in dialogues]
    provider.reset()  # reuse within the dialogues is what is measured, not across rounds
    turns = []
    for t in range(opts.turns):
        before = provider.prefill.tokens
        submitted = sum(len(d) for d in dialogues)
        out = []
        secs = harness.wall_s(lambda: out.extend(provider.generate(dialogues, 1, opts.turn_tokens)), device)
        turns.append({"turn": t + 1, "submitted_tokens": submitted,
                      "prefilled_tokens": provider.prefill.tokens - before, "seconds": secs})
        for d, samples in zip(dialogues, out):
            d += samples[0] + torch.randint(1, vocab, (opts.feedback_tokens,), generator=gen).tolist()
    gen_tokens = len(dialogues) * opts.turns * opts.turn_tokens
    return {"tokens_per_s": gen_tokens / sum(x["seconds"] for x in turns),
            "seconds": sum(x["seconds"] for x in turns), "turns": turns}


def run_case(case, provider, opts, vocab, device, seed) -> dict:
    """One run of a case; `seed` picks the prompts (a new one per round, so no provider's
    prefix cache serves one round from the last)."""
    if case == "distinct":
        return one_shot(provider, make_prompts(vocab, opts.batch, opts.prompt_len, seed), 1, opts.new_tokens, device)
    if case == "fanout":
        return one_shot(provider, make_prompts(vocab, opts.batch // opts.group, opts.prompt_len, seed),
                        opts.group, opts.new_tokens, device)
    return multiturn(provider, make_prompts(vocab, opts.dialogues, opts.prompt_len, seed), opts, vocab, device)


def bench_config(path: Path, opts, device, dtype) -> dict:
    """Every case x provider on one checkpoint, alternating providers over `opts.rounds`."""
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    providers = make_providers(opts.providers, path, device, dtype, max(opts.batch, opts.dialogues))
    live = [n for n, p in providers.items() if not isinstance(p, str)]
    out: dict = {n: {"skipped": p} for n, p in providers.items() if isinstance(p, str)}
    for name in out:
        print(f"  {name:12s} skipped: {out[name]['skipped']}", flush=True)
    for case in opts.cases:
        for name in live:  # warm-up: allocator, kernels, lazy init, compilation
            run_case(case, providers[name], opts, vocab, device, seed=0)
        runs = harness.alternate(live, opts.rounds,
                                 lambda name, r: run_case(case, providers[name], opts, vocab, device, seed=r + 1))
        for name, rs in runs.items():
            row = {"tokens_per_s": harness.spread([r["tokens_per_s"] for r in rs])}
            if case == "multiturn":
                row["prefill_source"] = providers[name].prefill_source
                row["turns"] = [{**t, "seconds": harness.spread([r["turns"][i]["seconds"] for r in rs])["median"]}
                                for i, t in enumerate(rs[-1]["turns"])]
            out.setdefault(name, {})[case] = row
            print(f"  {name:12s} {case:9s} {row['tokens_per_s']['median']:10.1f} tok/s"
                  + ("  prefilled per turn " + " ".join(str(t["prefilled_tokens"]) for t in row["turns"])
                     if case == "multiturn" else ""), flush=True)
        if "builtin" in runs:
            for peer in (p for p in runs if p != "builtin"):
                ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["builtin"], runs[peer])]
                out.setdefault(f"builtin_vs_{peer}", {})[case] = harness.spread(ratios)
    return out


# --------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default=None, help="comma list of tiny,1b (default: tiny on CPU, both on GPU)")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="comma list of " + ",".join(PROVIDERS))
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    ap.add_argument("--batch", type=int, default=64, help="sequences decoded together")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt in the fanout case")
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt lengths are uniform in [len/2, len]")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dialogues", type=int, default=16, help="multiturn: dialogues played together")
    ap.add_argument("--turns", type=int, default=5, help="multiturn: turns per dialogue")
    ap.add_argument("--turn-tokens", type=int, default=64, help="multiturn: new tokens per turn")
    ap.add_argument("--feedback-tokens", type=int, default=32, help="multiturn: tokens appended after a turn")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up (median and spread)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/engine-<device>.json)")
    return ap


def main():
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.providers = args.providers.split(",")
    args.cases = args.cases.split(",")
    if unknown := set(args.cases) - set(CASES):
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))} ({', '.join(CASES)})")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    configs = (args.configs or ("tiny,1b" if device.type == "cuda" else "tiny")).split(",")
    record = harness.result(
        "engine", device, dtype=str(dtype).removeprefix("torch."), unit="generated tokens/s",
        shape={k: getattr(args, k) for k in ("batch", "group", "prompt_len", "new_tokens", "dialogues",
                                             "turns", "turn_tokens", "feedback_tokens", "rounds")},
        results={})
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            print(f"{name}:", flush=True)
            record["results"][name] = bench_config(write_model(Path(tmp), name), args, device, dtype)
    harness.write_result(record, args.out or harness.RESULTS / f"engine-{device_slug(device)}.json")


if __name__ == "__main__":
    main()
