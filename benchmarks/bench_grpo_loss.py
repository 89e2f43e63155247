"""Microbenchmark for rl2f.kernels.grpo_token_loss: the clipped GRPO objective per token with
the k3 KL term and the logged statistics, in one pass.

    python -m benchmarks.bench_grpo_loss                  # GPU: N = 1M tokens
    python -m benchmarks.bench_grpo_loss --device cpu     # CPU: N = 256k tokens

Providers: torch (the formula in eager torch, as trainers write it), torch.compile (of the
same), ours (rl2f dispatcher: Triton on CUDA, torch on CPU). Liger-Kernel's GRPO loss is
fused with the lm_head matmul (a different op), so it has no per-token counterpart here.
Bytes model: forward reads lp, old, ref, advantages (fp32) and the mask (1 byte) and writes
loss and the saved gradient coefficient; backward reads grad and coefficient, writes grad.
"""
import torch

from benchmarks.ops import Case, base_parser, main, shape_argv

from rl2f.kernels import grpo_token_loss, grpo_token_loss_reference


def build(args) -> Case:
    device = torch.device(args.device)
    N, beta = args.N, args.beta
    lo, hi = args.clip_low, args.clip_high

    def make_inputs():
        torch.manual_seed(0)
        lp = torch.randn(N, device=device) * 0.5 - 2
        return {
            "lp": lp.clone().requires_grad_(),
            "old": lp + torch.randn(N, device=device) * 0.2,
            "ref": lp + torch.randn(N, device=device) * 0.2,
            "adv": torch.randn(N, device=device),
            "mask": torch.rand(N, device=device) > 0.2,
        }

    def call(fn):
        return lambda i: fn(i["lp"], i["old"], i["ref"], i["adv"], i["mask"], lo, hi, beta).loss

    compiled = torch.compile(grpo_token_loss_reference)
    return Case(
        op="grpo_token_loss",
        shape={"N": N, "beta": beta, "clip_low": lo, "clip_high": hi},
        make_inputs=make_inputs,
        providers={
            "torch": call(grpo_token_loss_reference),
            "torch.compile": call(compiled),
            "ours": call(grpo_token_loss),
            "liger": "Liger's GRPO loss is fused with the lm_head matmul: no per-token op",
        },
        work=lambda mode: {"bytes": N * {"forward": 25, "backward": 12, "full": 37}[mode]},
        notes=["bytes model: forward 25 B/token, backward 12 B/token"],
    )


if __name__ == "__main__":
    p = base_parser(__doc__)
    p.add_argument("--N", type=int, default=None)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--clip-low", type=float, default=0.2)
    p.add_argument("--clip-high", type=float, default=0.28)
    args = p.parse_args()
    args.N = args.N or (1 << 20 if args.device.startswith("cuda") else 1 << 18)
    args.dtype = args.dtype or "float32"
    main(build(args), args, shape_argv(args, ["device", "N", "beta", "clip_low", "clip_high"]))
