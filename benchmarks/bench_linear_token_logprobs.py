"""Microbenchmark for rl2f.kernels.linear_token_logprobs: log p(target) from hidden states
and the lm_head weight, without materialising the logits.

    python -m benchmarks.bench_linear_token_logprobs                  # GPU: Gemma 3 12B, bf16
    python -m benchmarks.bench_linear_token_logprobs --weight-grad    # lm_head trained too
    python -m benchmarks.bench_linear_token_logprobs --device cpu     # CPU: N=1024 H=256 V=16384
    python -m benchmarks.bench_linear_token_logprobs --device cpu --memory-only \\
        --N 4096 --H 512 --V 65536 --providers torch,ours             # the issue's CPU memory case

The default is a frozen lm_head (gradient for hidden only), the LoRA trainer's case.
Providers: torch (eager as trainers write it: logits = hidden @ W.T in the input dtype,
upcast to fp32, log_softmax, gather), torch.compile (of the same), ours (rl2f dispatcher),
ours-torch (chunked torch path forced on a GPU), and, where importable and T == 1, the peers:
torch.lce (torch.nn.functional.linear_cross_entropy with chunking options), liger
(Liger-Kernel fused linear cross entropy), cce (Apple's Cut Cross-Entropy, default options,
which include its gradient filtering). Peers return the summed loss, ours per-token lp.
FLOPs model (what the math needs, no recomputation counted): forward 2NVH; backward 2NVH for
the hidden gradient, plus 2NVH for the weight gradient. TFLOP/s are compared with a bf16
(or the run's dtype) matmul peak measured in the same run.
"""
import torch

from benchmarks.ops import Case, base_parser, find, forced_torch, main, parse_dtype, shape_argv

from rl2f.kernels import linear_token_logprobs


def eager(hidden, weight, targets, temperature=1.0, softcap=None):
    logits = (hidden @ weight.t()).float()                              # (N, V)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def peers(device, temperature):
    """name -> fn(inputs, softcap) returning a scalar loss, or a reason it cannot run."""
    out = {}
    plain = temperature == 1.0

    try:
        from torch.nn import LinearCrossEntropyOptions
        from torch.nn.functional import linear_cross_entropy
        out["torch.lce"] = (lambda i, c: linear_cross_entropy(
            i["hidden"], i["weight"], i["targets"], reduction="sum",
            options=LinearCrossEntropyOptions())) if plain else "needs T == 1"
    except ImportError:
        out["torch.lce"] = f"torch {torch.__version__} has no linear_cross_entropy"
    if device.type != "cuda":
        out["liger"] = out["cce"] = "runs on CUDA only"
        return out
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        out["liger"] = (lambda i, c: liger_fused_linear_cross_entropy(
            i["hidden"], i["weight"], i["targets"], reduction="sum", softcap=c)) if plain else "needs T == 1"
    except ImportError as e:
        out["liger"] = f"liger-kernel not importable ({type(e).__name__})"
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
        out["cce"] = (lambda i, c: cce(i["hidden"], i["weight"], i["targets"], softcap=c,
                                       reduction="sum")) if plain else "needs T == 1"
    except ImportError as e:
        out["cce"] = f"cut-cross-entropy not importable ({type(e).__name__})"
    return out


def build(args) -> Case:
    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype)
    N, H, V, T, cap = args.N, args.H, args.V, args.temperature, args.softcap

    def make_inputs():
        torch.manual_seed(0)
        return {
            "hidden": torch.randn(N, H, device=device, dtype=dtype).requires_grad_(),
            "weight": (torch.randn(V, H, device=device, dtype=dtype) / H ** 0.5)
            .requires_grad_(args.weight_grad),
            "targets": torch.randint(0, V, (N,), device=device),
        }

    compiled = torch.compile(eager)
    providers = {
        "torch": lambda i: eager(i["hidden"], i["weight"], i["targets"], T, cap),
        "torch.compile": lambda i: compiled(i["hidden"], i["weight"], i["targets"], T, cap),
        "ours": lambda i: linear_token_logprobs(i["hidden"], i["weight"], i["targets"], T, cap),
    }
    if device.type == "cuda":
        providers["ours-torch"] = forced_torch(
            lambda i: linear_token_logprobs(i["hidden"], i["weight"], i["targets"], T, cap))
    for name, fn in peers(device, T).items():
        if name == "torch.lce" and cap is not None and not isinstance(fn, str):
            fn = "has no softcap"
        providers[name] = fn if isinstance(fn, str) else (lambda i, fn=fn: fn(i, cap))
    mm = 2 * N * V * H
    bwd = mm * (2 if args.weight_grad else 1)
    return Case(
        op="linear_token_logprobs" + (".weight_grad" if args.weight_grad else ""),
        shape={"N": N, "H": H, "V": V, "dtype": str(dtype).removeprefix("torch."),
               "temperature": T, "softcap": cap, "weight_grad": args.weight_grad},
        make_inputs=make_inputs,
        providers=providers,
        work=lambda mode: {"flops": {"forward": mm, "backward": bwd, "full": mm + bwd}[mode]},
        # ours (and the peers) do hidden-gradient work inside forward: a rate for the forward
        # or backward mode alone would compare different work, so rates are for full passes
        rate_modes=("full",),
        notes=["flops model: forward 2NVH, backward 2NVH per gradient (hidden, weight); "
               "rates are for full passes only"],
    )


def goals(rows, peaks, device):
    """GPU: full pass faster than Liger and CCE, >= 60% of the measured matmul peak, peak
    extra memory <= 2% of eager's. CPU: peak extra memory <= 1/8 of eager's."""
    ours, eager_row = find(rows, "ours", "full"), find(rows, "torch", "full")
    if ours is None:
        return {"status": "ours did not run"}
    out = {}
    mem, base = ours.get("peak_extra_mb"), (eager_row or {}).get("peak_extra_mb")
    limit = 0.02 if device.type == "cuda" else 1 / 8
    out["full_mem_vs_eager"] = {"value": mem / base if mem is not None and base else None,
                                "goal": f"<= {limit:g}",
                                "met": bool(mem is not None and base and mem <= limit * base)}
    if device.type == "cuda":
        out["full_pct_matmul_peak"] = {"value": ours.get("pct_matmul_peak"), "goal": ">= 60",
                                       "met": (ours.get("pct_matmul_peak") or 0) >= 60}
        for peer in ("liger", "cce"):
            other = find(rows, peer, "full")
            out[f"full_faster_than_{peer}"] = (
                {"value": other["ms"] / ours["ms"], "goal": "> 1", "met": other["ms"] > ours["ms"]}
                if other and "ms" in ours and "ms" in other else {"status": f"{peer} did not run"})
    return out


if __name__ == "__main__":
    p = base_parser(__doc__)
    p.add_argument("--N", type=int, default=None)
    p.add_argument("--H", type=int, default=None)
    p.add_argument("--V", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--softcap", type=float, default=None)
    p.add_argument("--weight-grad", action="store_true", help="the lm_head requires grad")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.N = args.N or (8192 if gpu else 1024)
    args.H = args.H or (3840 if gpu else 256)
    args.V = args.V or (262144 if gpu else 16384)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    main(build(args), args,
         shape_argv(args, ["device", "dtype", "N", "H", "V", "temperature", "softcap", "weight_grad"]),
         goals)
