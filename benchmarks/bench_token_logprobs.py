"""Microbenchmark for rl2f.kernels.token_logprobs: log softmax(logits / T)[target] per row.

    python -m benchmarks.bench_token_logprobs                 # GPU: Gemma 3 12B case, bf16
    python -m benchmarks.bench_token_logprobs --device cpu    # CPU: N=1024, V=32768, fp32
    python -m benchmarks.bench_token_logprobs --providers torch,ours --modes full

Providers: torch (eager: fp32 upcast, log_softmax, gather), torch.compile (of the same),
ours (the rl2f dispatcher: Triton on CUDA, chunked torch on CPU), ours-torch (the chunked
torch path forced on a GPU), liger (Liger-Kernel's cross entropy, reduction='none', T=1 only;
when importable). Bytes model: forward reads the logits once; backward reads them again and
writes the gradient, so full = 3 N V itemsize: GB/s and % of HBM peak are against that.
"""
import torch

from benchmarks.ops import Case, base_parser, find, forced_torch, main, parse_dtype, shape_argv

from rl2f.kernels import token_logprobs, token_logprobs_reference


def liger(device, temperature):
    if device.type != "cuda":
        return "liger-kernel runs on CUDA only"
    if temperature != 1.0:
        return "liger cross entropy takes no temperature"
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError as e:
        return f"liger-kernel not importable ({type(e).__name__})"
    # it writes the gradient into the logits in forward: values change between reps, work does not
    return lambda i: -liger_cross_entropy(i["logits"], i["targets"], reduction="none")


def build(args) -> Case:
    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype)
    N, V, T = args.N, args.V, args.temperature

    def make_inputs():
        torch.manual_seed(0)
        logits = (torch.randn(N, V, device=device, dtype=dtype) * 2).requires_grad_()
        return {"logits": logits, "targets": torch.randint(0, V, (N,), device=device)}

    compiled = torch.compile(token_logprobs_reference)
    providers = {
        "torch": lambda i: token_logprobs_reference(i["logits"], i["targets"], T),
        "torch.compile": lambda i: compiled(i["logits"], i["targets"], T),
        "ours": lambda i: token_logprobs(i["logits"], i["targets"], T),
    }
    if device.type == "cuda":
        providers["ours-torch"] = forced_torch(lambda i: token_logprobs(i["logits"], i["targets"], T))
    providers["liger"] = liger(device, T)
    itemsize = torch.finfo(dtype).bits // 8
    passes = {"forward": 1, "backward": 2, "full": 3}
    return Case(
        op="token_logprobs",
        shape={"N": N, "V": V, "dtype": str(dtype).removeprefix("torch."), "temperature": T},
        make_inputs=make_inputs,
        providers=providers,
        work=lambda mode: {"bytes": passes[mode] * N * V * itemsize},
        notes=["bytes model: forward 1, backward 2, full 3 passes over N*V*itemsize"],
    )


def goals(rows, peaks, device):
    """The issue's GPU goals for the full pass: >= 80% of HBM peak and >= 3x eager."""
    if device.type != "cuda":
        return {"status": "the goals are for a GPU; this run is on CPU"}
    ours = find(rows, "ours", "full")
    if ours is None:
        return {"status": "ours did not run"}
    return {
        "full_pct_hbm_peak": {"value": ours.get("pct_hbm_peak"), "goal": ">= 80",
                              "met": ours.get("pct_hbm_peak", 0) >= 80},
        "full_speedup_vs_eager": {"value": ours.get("speedup_vs_torch"), "goal": ">= 3",
                                  "met": (ours.get("speedup_vs_torch") or 0) >= 3},
    }


if __name__ == "__main__":
    p = base_parser(__doc__)
    p.add_argument("--N", type=int, default=None)
    p.add_argument("--V", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.N = args.N or (8192 if gpu else 1024)
    args.V = args.V or (262144 if gpu else 32768)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    main(build(args), args, shape_argv(args, ["device", "dtype", "N", "V", "temperature"]), goals)
