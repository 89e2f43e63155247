"""Fused kernels (installed as `rl2f.kernels`): token log-probs from logits or straight from
hidden states and the lm_head, and the per-token GRPO loss. Each op picks Triton on CUDA and
a chunked torch path elsewhere; RL2F_KERNELS=auto|triton|torch overrides (see _dispatch)."""
if __name__ != "rl2f.kernels":
    # Imported as top-level `kernels` (the repository root is on sys.path): that name belongs
    # to any installed distribution of it, Hugging Face's kernel hub for one (see rl2f.toplevel).
    from rl2f.toplevel import give_way

    give_way(__name__, __file__)
else:
    from .grpo_loss import GRPOLoss, grpo_token_loss, grpo_token_loss_reference
    from .linear_token_logprobs import linear_token_logprobs, linear_token_logprobs_reference
    from .token_logprobs import token_logprobs, token_logprobs_reference

    __all__ = [
        "GRPOLoss",
        "grpo_token_loss",
        "grpo_token_loss_reference",
        "linear_token_logprobs",
        "linear_token_logprobs_reference",
        "token_logprobs",
        "token_logprobs_reference",
    ]
