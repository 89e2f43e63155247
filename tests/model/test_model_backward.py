"""Training-side behaviour of the decoder: gradients through a padded batch are finite, and
gradient checkpointing recomputes the same gradients."""
import pytest
import torch

from rl2f.model.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_gradient_checkpointing_same_grads():
    """Per-layer recomputation in backward changes no gradient (fp32, 1e-6), and a
    left-padded batch (fully masked pad rows) gives finite gradients."""
    _, model = build_tiny_model("gemma3", 50, seed=0, sliding_window=4)
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0

    def grads(checkpointing):
        model.zero_grad()
        model.model.gradient_checkpointing = checkpointing
        logits = model(ids, attention_mask=mask)
        (logits[mask.bool()].logsumexp(-1).sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    plain, ckpt = grads(False), grads(True)
    assert all(torch.isfinite(g).all() for g in plain.values())
    assert plain.keys() == ckpt.keys()
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n


@pytest.mark.parametrize("offset", [True, False])
@pytest.mark.parametrize("train_weight", [True, False])
def test_rms_norm_training_gradients_match_fp64_formula(offset, train_weight):
    """The training RMSNorm (fp32, backward written out) gives the output and the gradients
    of x and of the weight of the fp64 formula x * rsqrt(mean(x^2) + eps) * (1 + w or w),
    and no weight gradient when the weight is frozen (LoRA)."""
    from rl2f.model.modeling import RMSNorm
    torch.manual_seed(0)
    norm = RMSNorm(48, 1e-6, offset)
    with torch.no_grad():
        norm.weight.normal_(0, 0.3)
    norm.weight.requires_grad_(train_weight)
    x = (torch.randn(3, 5, 48) * 4).requires_grad_(True)
    g = torch.randn(3, 5, 48)
    y = norm(x)
    y.backward(g)
    x64, w64 = x.detach().double().requires_grad_(True), norm.weight.detach().double().requires_grad_(True)
    want = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * ((1 + w64) if offset else w64)
    want.backward(g.double())
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    if train_weight:
        torch.testing.assert_close(norm.weight.grad.double(), w64.grad, atol=1e-4, rtol=1e-5)
    else:
        assert norm.weight.grad is None
