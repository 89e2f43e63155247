"""linear_token_logprobs: log p(target) from hidden states and the lm_head weight, without
ever holding the (N, V) logits.

    z = hidden @ weight.T,  y = softcap * tanh(z / softcap) / T  (or z / T),
    lp = y[target] - logsumexp(y)

The vocabulary is walked in chunks of CV columns (and the tokens in chunks of TN rows when N
is huge): only one (TN, CV) block of logits exists at a time, about 128 MiB on a GPU. The
matmuls are cuBLAS calls on those blocks, where the flops are spent at full tensor-core
speed; Triton kernels do everything between them (online logsumexp, softcap, target pick,
softmax-weighted gradients) in place on the block, so it makes one trip to HBM and back.

Gradient wrt hidden, computed in the forward pass. For row i with p = softmax(y),
f' = dy/dz * T (1 - tanh^2 for softcap, else 1):

    d lp / d h = (1/T) [ f'_t W_t (1 - p_t) - sum_{j != t} p_j f'_j W_j ]

and only the scalar g_i = d loss / d lp_i is unknown until backward, so forward accumulates
the bracket like flash attention accumulates P @ V: with a running max m per row,
acc += exp(y - m) f' @ W_chunk, rescaled when m grows. The target column is kept out of acc
and out of the running sum, so 1 - p_t = S_excl / S stays exact as p_t -> 1 instead of
cancelling. Backward for hidden is then g[:, None] * gh0: a trainer with a frozen lm_head
(LoRA) pays two matmul passes in all, where recomputing in backward would pay three.

Gradient wrt weight (when it requires grad; a tied embedding just passes its tensor): backward
recomputes each logits block, turns it into dz = g (1[j == t] - p) f' / T in place and writes
dW[chunk] = dz.T @ hidden, so dW is produced slice by slice with no fp32 (V, H) buffer.

The torch path runs the same driver with torch epilogues instead of the Triton kernels, so
it keeps the same memory property on CPU.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._dispatch import backend, flat_rows, interpreted, kernel, next_pow2, on_device, tl, triton

# Logits elements per (TN, CV) block: 128 MiB of bf16 on a GPU; 4 MiB of fp32 on CPU, where
# the torch epilogue holds a few fp32 temporaries of the block's size.
CHUNK_ELEMS = {"cuda": 1 << 26, "cpu": 1 << 20}
MIN_CHUNK_V = 256
MAX_CHUNK_V = 8192  # a Triton program holds a whole block row in registers

_NEG_BIG = -3.0e38  # finite initial max: exp(m_old - m_new) must never be inf - inf


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def _tanh(u):
    # Triton's core language has no tanh; exp(-2|u|) <= 1 never overflows
    e = tl.exp(-2.0 * tl.abs(u))
    th = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0, -th, th)


@triton.jit
def _capped(z, inv_t, softcap, HAS_SOFTCAP: tl.constexpr):
    """(y, f'): the scaled logit y = softcap tanh(z / softcap) / T (z / T without a cap) and
    f' = 1 - tanh^2, the cap's derivative (1 without a cap)."""
    if HAS_SOFTCAP:
        th = _tanh(z / softcap)
        y = th * (softcap * inv_t)
        fp = 1.0 - th * th
    else:
        y = z * inv_t
        fp = tl.zeros_like(z) + 1.0
    return y, fp


@triton.jit
def _fwd_epilogue_kernel(
    z_ptr, z_stride, t_ptr, m_ptr, sex_ptr, zt_ptr, alpha_ptr,
    n_rows, C, v0, inv_t, softcap, ignore_index,
    HAS_SOFTCAP: tl.constexpr, WRITE_P: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One (ROWS, C) block of logits: fold it into the running (m, S_excl), pick z[target],
    and with WRITE_P overwrite it with exp(y - m_new) * f' (zero at the target)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    t_local = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index) - v0
    is_t = cols[None, :] == t_local[:, None]                            # ignored rows: never
    not_t = cols[None, :] != t_local[:, None]
    ptrs = z_ptr + rows.to(tl.int64)[:, None] * z_stride + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)              # (ROWS, BLOCK_C)
    y, fp = _capped(z, inv_t, softcap, HAS_SOFTCAP)
    y = tl.where(col_ok[None, :] & not_t, y, float("-inf"))
    m_old = tl.load(m_ptr + rows, mask=row_ok, other=0.0)
    m_new = tl.maximum(m_old, tl.max(y, axis=1))
    alpha = tl.exp(m_old - m_new)
    e = tl.exp(y - m_new[:, None])
    s_ex = tl.load(sex_ptr + rows, mask=row_ok, other=0.0) * alpha + tl.sum(e, axis=1)
    tl.store(m_ptr + rows, m_new, mask=row_ok)
    tl.store(sex_ptr + rows, s_ex, mask=row_ok)
    z_t = tl.sum(tl.where(is_t, z, 0.0), axis=1)
    tl.store(zt_ptr + rows, z_t, mask=row_ok & (t_local >= 0) & (t_local < C))
    if WRITE_P:
        if HAS_SOFTCAP:
            e = e * fp
        tl.store(ptrs, e.to(z_ptr.dtype.element_ty), mask=mask)
        tl.store(alpha_ptr + rows, alpha, mask=row_ok)


@triton.jit
def _rescale_add_kernel(acc_ptr, mm_ptr, alpha_ptr, H, BLOCK_H: tl.constexpr):
    """acc[i] = acc[i] * alpha[i] + mm[i]: the flash-attention rescale of the running sum."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = cols < H
    alpha = tl.load(alpha_ptr + row)
    acc = tl.load(acc_ptr + row * H + cols, mask=ok, other=0.0)
    mm = tl.load(mm_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(acc_ptr + row * H + cols, acc * alpha + mm, mask=ok)


@triton.jit
def _finalize_kernel(
    m_ptr, sex_ptr, zt_ptr, t_ptr, lp_ptr, lse_ptr, q_ptr,
    acc_ptr, w_ptr, w_stride, gh_ptr,
    n_rows, H, inv_t, softcap, ignore_index,
    HAS_SOFTCAP: tl.constexpr, GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Per row: lp, lse, q = 1 - p_t from the running state; with GRAD the hidden-state
    gradient per unit g: gh0 = (f'_t S_excl W_t - acc) / (S T)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    t = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    ok = row_ok & (t != ignore_index)
    m = tl.load(m_ptr + rows, mask=row_ok, other=0.0)
    z_t = tl.load(zt_ptr + rows, mask=row_ok, other=0.0)
    y_t, fp_t = _capped(z_t, inv_t, softcap, HAS_SOFTCAP)
    m_f = tl.maximum(m, y_t)  # the target was kept out of m: fold it in now
    r = tl.exp(m - m_f)
    s_ex = tl.load(sex_ptr + rows, mask=row_ok, other=0.0) * r
    s = s_ex + tl.exp(y_t - m_f)
    log_s = tl.log(s)
    tl.store(lp_ptr + rows, tl.where(ok, (y_t - m_f) - log_s, 0.0), mask=row_ok)
    tl.store(lse_ptr + rows, tl.where(ok, m_f + log_s, 0.0), mask=row_ok)
    tl.store(q_ptr + rows, tl.where(ok, s_ex / s, 0.0), mask=row_ok)
    if GRAD:
        scale = tl.where(ok, inv_t / s, 0.0)
        c_t = fp_t * s_ex
        rows64 = rows.to(tl.int64)
        t64 = tl.where(ok, t, 0).to(tl.int64)
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            mask = row_ok[:, None] & (cols < H)[None, :]
            w_t = tl.load(w_ptr + t64[:, None] * w_stride + cols[None, :],
                          mask=mask & ok[:, None], other=0.0).to(tl.float32)
            acc = tl.load(acc_ptr + rows64[:, None] * H + cols[None, :], mask=mask, other=0.0)
            gh = (c_t[:, None] * w_t - r[:, None] * acc) * scale[:, None]
            tl.store(gh_ptr + rows64[:, None] * H + cols[None, :],
                     gh.to(gh_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_epilogue_kernel(
    z_ptr, z_stride, t_ptr, g_ptr, lse_ptr, q_ptr,
    n_rows, C, v0, inv_t, softcap, ignore_index,
    HAS_SOFTCAP: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Overwrite a recomputed logits block with dz = g (1[j == t] - p_j) f'_j / T."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    t = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    coef = tl.where(t != ignore_index, tl.load(g_ptr + rows, mask=row_ok, other=0.0) * inv_t, 0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    q = tl.load(q_ptr + rows, mask=row_ok, other=0.0)
    ptrs = z_ptr + rows.to(tl.int64)[:, None] * z_stride + cols[None, :]
    mask = row_ok[:, None] & (cols < C)[None, :]
    z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    y, fp = _capped(z, inv_t, softcap, HAS_SOFTCAP)
    p = tl.exp(y - lse[:, None])
    d = tl.where(cols[None, :] == (t - v0)[:, None], q[:, None], -p) * (coef[:, None] * fp)
    tl.store(ptrs, d.to(z_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- epilogues
# Each exists twice with one signature: a Triton launcher and its torch twin (torch path).
def _rows_per_program(z):
    return 16 if interpreted(z) else 1


def _warps(block):
    return 16 if block >= 8192 else (8 if block >= 2048 else 4)


def _fwd_epilogue_triton(z, t, v0, m, s_ex, z_t, inv_t, softcap, ignore_index, write_p):
    n, C = z.shape
    rows, block = _rows_per_program(z), next_pow2(C)
    alpha = torch.empty(n, dtype=torch.float32, device=z.device) if write_p else m
    kernel(_fwd_epilogue_kernel, z)[(triton.cdiv(n, rows),)](
        z, z.stride(0), t, m, s_ex, z_t, alpha, n, C, v0, inv_t, softcap or 1.0, ignore_index,
        HAS_SOFTCAP=softcap is not None, WRITE_P=write_p, ROWS=rows, BLOCK_C=block,
        num_warps=_warps(block))
    return alpha


def _fwd_epilogue_torch(z, t, v0, m, s_ex, z_t, inv_t, softcap, ignore_index, write_p):
    # z is the driver's own scratch block: it is worked on in place to save passes and memory
    n, C = z.shape
    t_local = t - v0
    in_chunk = (t_local >= 0) & (t_local < C)                          # ignored rows: False
    idx = torch.where(in_chunk, t_local, 0).unsqueeze(1)                # (n, 1)
    y = z if z.dtype == torch.float32 else z.float()                    # (n, C)
    z_t.copy_(torch.where(in_chunk, y.gather(1, idx).squeeze(1), z_t))
    if softcap is not None:
        th = y.div_(softcap).tanh_()
        y = th * (softcap * inv_t)
    elif inv_t != 1.0:
        y.mul_(inv_t)
    y.scatter_(1, idx, torch.where(in_chunk.unsqueeze(1), float("-inf"), y.gather(1, idx)))
    m_new = torch.maximum(m, y.amax(1))
    alpha = (m - m_new).exp()
    e = y.sub_(m_new.unsqueeze(1)).exp_()                               # (n, C), target 0
    s_ex.mul_(alpha).add_(e.sum(1))
    m.copy_(m_new)
    if write_p:
        if softcap is not None:
            e.mul_(torch.addcmul(e.new_ones(()), th, th, value=-1.0))   # f' = 1 - tanh^2
        if e.data_ptr() != z.data_ptr():
            z.copy_(e)
    return alpha


def _rescale_add_triton(acc, mm, alpha):
    n, H = acc.shape
    block = min(1024, next_pow2(H)) if not interpreted(acc) else max(16, next_pow2(H) // 2)
    kernel(_rescale_add_kernel, acc)[(n, triton.cdiv(H, block))](
        acc, mm, alpha, H, BLOCK_H=block, num_warps=4)


def _rescale_add_torch(acc, mm, alpha):
    acc.mul_(alpha.unsqueeze(1)).add_(mm)


def _finalize_triton(m, s_ex, z_t, t, lp, lse, q, acc, w, gh, inv_t, softcap, ignore_index):
    n = m.shape[0]
    H = w.shape[1]
    rows = _rows_per_program(m)
    block = max(16, next_pow2(H) // 2) if interpreted(m) else min(1024, next_pow2(H))
    grad = acc is not None
    kernel(_finalize_kernel, m)[(triton.cdiv(n, rows),)](
        m, s_ex, z_t, t, lp, lse, q, acc if grad else m, w, w.stride(0), gh if grad else m,
        n, H, inv_t, softcap or 1.0, ignore_index,
        HAS_SOFTCAP=softcap is not None, GRAD=grad, ROWS=rows, BLOCK_H=block, num_warps=4)


def _finalize_torch(m, s_ex, z_t, t, lp, lse, q, acc, w, gh, inv_t, softcap, ignore_index):
    ok = t != ignore_index
    if softcap is not None:
        th = torch.tanh(z_t / softcap)
        y_t, fp_t = th * (softcap * inv_t), 1.0 - th * th
    else:
        y_t, fp_t = z_t * inv_t, torch.ones_like(z_t)
    m_f = torch.maximum(m, y_t)
    r = (m - m_f).exp()
    s_ex = s_ex * r
    s = s_ex + (y_t - m_f).exp()
    log_s = s.log()
    lp.copy_(torch.where(ok, y_t - m_f - log_s, 0.0))
    lse.copy_(torch.where(ok, m_f + log_s, 0.0))
    q.copy_(torch.where(ok, s_ex / s, 0.0))
    if acc is not None:
        w_t = w[torch.where(ok, t, 0)].float()                          # (n, H)
        scale = torch.where(ok, inv_t / s, 0.0).unsqueeze(1)
        gh.copy_(w_t.mul_((fp_t * s_ex).unsqueeze(1)).sub_(acc * r.unsqueeze(1)).mul_(scale))


def _bwd_epilogue_triton(z, t, g, lse, q, v0, inv_t, softcap, ignore_index):
    n, C = z.shape
    rows, block = _rows_per_program(z), next_pow2(C)
    kernel(_bwd_epilogue_kernel, z)[(triton.cdiv(n, rows),)](
        z, z.stride(0), t, g, lse, q, n, C, v0, inv_t, softcap or 1.0, ignore_index,
        HAS_SOFTCAP=softcap is not None, ROWS=rows, BLOCK_C=block, num_warps=_warps(block))


def _bwd_epilogue_torch(z, t, g, lse, q, v0, inv_t, softcap, ignore_index):
    n, C = z.shape
    ok = t != ignore_index
    t_local = t - v0
    in_chunk = (t_local >= 0) & (t_local < C)
    idx = torch.where(in_chunk, t_local, 0).unsqueeze(1)                # (n, 1)
    coef = torch.where(ok, g.float() * inv_t, 0.0).unsqueeze(1)         # (n, 1)
    d = z if z.dtype == torch.float32 else z.float()                    # (n, C) in place
    if softcap is not None:
        th = d.div_(softcap).tanh_()
        fp = torch.addcmul(th.new_ones(()), th, th, value=-1.0)         # f' = 1 - tanh^2
        d = th.mul_(softcap * inv_t)
    elif inv_t != 1.0:
        d.mul_(inv_t)
    d.sub_(lse.unsqueeze(1)).exp_().mul_(-coef)                         # -p g / T
    d.scatter_(1, idx, torch.where(in_chunk.unsqueeze(1), q.unsqueeze(1) * coef, d.gather(1, idx)))
    if softcap is not None:
        d.mul_(fp)
    if d.data_ptr() != z.data_ptr():
        z.copy_(d)


_TRITON = (_fwd_epilogue_triton, _rescale_add_triton, _finalize_triton, _bwd_epilogue_triton)
_TORCH = (_fwd_epilogue_torch, _rescale_add_torch, _finalize_torch, _bwd_epilogue_torch)


# --------------------------------------------------------------------------- driver
def _plan(N: int, V: int, x: torch.Tensor):
    """(TN, CV): rows and vocab columns per logits block, about CHUNK_ELEMS elements."""
    elems = CHUNK_ELEMS["cuda" if x.is_cuda else "cpu"]
    cv = max(MIN_CHUNK_V, min(MAX_CHUNK_V, 1 << max(0, (elems // max(N, 1)).bit_length() - 1)))
    cv = min(cv, V)
    tn = max(1, min(N, elems // cv))
    return tn, cv


def _scratch(x, numel):
    """One block buffer reused by every chunk (on CPU fresh big blocks cost page faults)."""
    return torch.empty(numel, dtype=x.dtype, device=x.device)


def _view(buf, rows, cols):
    return buf[:rows * cols].view(rows, cols)  # contiguous even for a narrower last chunk


def _forward(h, w, t, inv_t, softcap, ignore_index, need_gh, ops):
    fwd_epi, rescale_add, finalize, _ = ops
    N, H = h.shape
    V = w.shape[0]
    dev = h.device
    lp, lse, q = (torch.empty(N, dtype=torch.float32, device=dev) for _ in range(3))
    gh0 = torch.empty_like(h) if need_gh else None                      # (N, H)
    tn, cv = _plan(N, V, h)
    zbuf, mmbuf = _scratch(h, tn * min(cv, V)), _scratch(h, tn * H if need_gh else 0)
    for n0 in range(0, N, tn):
        n1 = min(n0 + tn, N)
        hs, ts = h[n0:n1], t[n0:n1]                                     # (n, H), (n,)
        m = torch.full((n1 - n0,), _NEG_BIG, dtype=torch.float32, device=dev)
        s_ex = torch.zeros(n1 - n0, dtype=torch.float32, device=dev)
        z_t = torch.zeros(n1 - n0, dtype=torch.float32, device=dev)
        acc = torch.zeros(n1 - n0, H, dtype=torch.float32, device=dev) if need_gh else None
        for v0 in range(0, V, cv):
            ws = w[v0:v0 + cv]                                          # (c, H)
            z = torch.mm(hs, ws.t(), out=_view(zbuf, n1 - n0, ws.shape[0]))  # (n, c) logits
            alpha = fwd_epi(z, ts, v0, m, s_ex, z_t, inv_t, softcap, ignore_index, need_gh)
            if need_gh:  # z now holds P f'
                rescale_add(acc, torch.mm(z, ws, out=_view(mmbuf, n1 - n0, H)), alpha)
        finalize(m, s_ex, z_t, ts, lp[n0:n1], lse[n0:n1], q[n0:n1], acc, w,
                 gh0[n0:n1] if need_gh else None, inv_t, softcap, ignore_index)
    return lp, lse, q, gh0


def _weight_grad(h, w, t, g, lse, q, inv_t, softcap, ignore_index, ops):
    bwd_epi = ops[3]
    N, V = h.shape[0], w.shape[0]
    tn, cv = _plan(N, V, h)
    one_pass = tn >= N > 0
    dw = torch.empty_like(w) if one_pass else torch.zeros_like(w)       # (V, H)
    zbuf = _scratch(h, tn * min(cv, V))
    for v0 in range(0, V, cv):
        v1 = min(v0 + cv, V)
        for n0 in range(0, N, tn):
            n1 = min(n0 + tn, N)
            hs = h[n0:n1]
            z = torch.mm(hs, w[v0:v1].t(), out=_view(zbuf, n1 - n0, v1 - v0))  # (n, c) recomputed
            bwd_epi(z, t[n0:n1], g[n0:n1], lse[n0:n1], q[n0:n1], v0, inv_t, softcap, ignore_index)
            if one_pass:
                torch.mm(z.t(), hs, out=dw[v0:v1])
            else:
                dw[v0:v1].addmm_(z.t(), hs)
    return dw


# --------------------------------------------------------------------------- autograd
class LinearTokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, softcap, ignore_index, use_triton,
                grad_enabled):
        h = flat_rows(hidden)                                           # (N, H)
        w = weight if weight.stride(-1) == 1 else weight.contiguous()   # (V, H)
        t = targets.reshape(-1)                                         # (N,)
        inv_t = 1.0 / float(temperature)
        ops = _TRITON if use_triton else _TORCH
        # needs_input_grad ignores no_grad(); under no_grad there will be no backward to prepay
        need_gh = ctx.needs_input_grad[0] and grad_enabled
        # autocast would change the block dtypes under the epilogues and forbids out=
        with on_device(h), torch.autocast(h.device.type, enabled=False):
            lp, lse, q, gh0 = _forward(h, w, t, inv_t, softcap, ignore_index, need_gh, ops)
        ctx.save_for_backward(h, w, t, lse, q, gh0)
        ctx.meta = (inv_t, softcap, ignore_index, ops, hidden.shape)
        return lp.view(targets.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lp):
        h, w, t, lse, q, gh0 = ctx.saved_tensors
        inv_t, softcap, ignore_index, ops, shape = ctx.meta
        g = grad_lp.reshape(-1).float()                                 # (N,)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = (gh0 * g.unsqueeze(1)).to(h.dtype).view(shape)     # (N, H)
        if ctx.needs_input_grad[1]:
            with on_device(h), torch.autocast(h.device.type, enabled=False):
                grad_w = _weight_grad(h, w, t, g.contiguous(), lse, q, inv_t, softcap,
                                      ignore_index, ops)
        return grad_h, grad_w, None, None, None, None, None, None


# --------------------------------------------------------------------------- public op
def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, softcap: float | None = None,
                          ignore_index: int = -100) -> torch.Tensor:
    """log softmax(softcap(hidden @ weight.T) / temperature)[targets] as float32.

    hidden: (..., H); weight: (V, H), the lm_head (or the tied embedding), same dtype;
    targets: (...) integer ids in [0, V) or `ignore_index` (gives 0, no gradient).
    softcap: Gemma's final_logit_softcapping c, applied as c * tanh(z / c) before the
    temperature. Gradients flow to hidden and, if it requires grad, to weight.
    Holds about CHUNK_ELEMS logits at a time instead of N x V.
    """
    if targets.shape != hidden.shape[:-1] or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"linear_token_logprobs: hidden {tuple(hidden.shape)}, weight "
                         f"{tuple(weight.shape)}, targets {tuple(targets.shape)} do not fit "
                         "(..., H), (V, H), (...)")
    if hidden.dtype != weight.dtype or not hidden.is_floating_point():
        raise ValueError(f"linear_token_logprobs: hidden ({hidden.dtype}) and weight "
                         f"({weight.dtype}) must share one floating dtype")
    if targets.is_floating_point():
        raise ValueError("linear_token_logprobs: targets must be integer ids")
    if not temperature > 0 or (softcap is not None and not softcap > 0):
        raise ValueError(f"linear_token_logprobs: temperature ({temperature}) and softcap "
                         f"({softcap}) must be > 0")
    use_triton = backend(hidden) == "triton"
    return LinearTokenLogprobsFunction.apply(hidden, weight, targets, temperature, softcap,
                                             ignore_index, use_triton, torch.is_grad_enabled())


def linear_token_logprobs_reference(hidden, weight, targets, temperature=1.0, softcap=None,
                                    ignore_index=-100):
    """The naive eager computation (full fp32 logits) the op must match."""
    z = hidden.float() @ weight.float().t()                             # (..., V) fp32
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ok = targets != ignore_index
    logp = torch.log_softmax(z / temperature, dim=-1)
    lp = logp.gather(-1, torch.where(ok, targets, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(ok, lp, 0.0)
