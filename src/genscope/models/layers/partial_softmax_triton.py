"""Triton kernels of the partially fused softmax (imported only when :func:`triton_available`).

Chen et al. 2023, Section 3.2.1: A = scale * Q K^T is materialized (cuBLAS), then

* ``_row_stats_kernel``: one program per block of ``BLOCK_R`` rows of one (batch*head); it sweeps the
  row block's columns in ``BLOCK_C`` chunks keeping a running max and a rescaled running sum
  (``l <- l * exp(m_old - m_new) + sum exp(a - m_new)``), and writes ``[m, l]`` per row: the ``N x 2``
  tensor. All blocks of all rows run in one launch (the paper's multi-stage reduction in one command).
* ``_exp_matmul_kernel``: one program per (batch*head, block of rows); for each chunk of columns it loads
  the A tile, forms ``exp(a - m)`` in registers, multiplies it with the V tile on the tensor cores
  (fp32 accumulation) and finally divides by ``l``: the normalization fused into the matmul with V.

Untested on a GPU in this checkout (no CUDA device and no triton package on the machine it was written
on); ``tests/test_passes.py`` runs these kernels under ``TRITON_INTERPRET=1`` when triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_stats_kernel(a_ptr, stats_ptr, n_rows, n_cols, stride_ab, stride_ar, stride_sb, stride_sr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    bh = tl.program_id(0)
    rblock = tl.program_id(1)
    rows = rblock * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_R], tl.float32)
    for c0 in range(0, n_cols, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cols[None, :] < n_cols)
        a = tl.load(a_ptr + bh * stride_ab + rows[:, None] * stride_ar + cols[None, :], mask=ok,
                    other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(a, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        row_sum = row_sum * tl.exp(m - m_safe) + tl.sum(tl.exp(a - m_safe[:, None]), axis=1)
        m = m_new
    base = stats_ptr + bh * stride_sb + rows * stride_sr
    tl.store(base, m, mask=row_ok)
    tl.store(base + 1, row_sum, mask=row_ok)


@triton.jit
def _exp_matmul_kernel(a_ptr, v_ptr, stats_ptr, out_ptr, n_rows, n_cols, d_v,
                       stride_ab, stride_ar, stride_vb, stride_vr, stride_sb, stride_sr, stride_ob, stride_or,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    rblock = tl.program_id(1)
    rows = rblock * BLOCK_R + tl.arange(0, BLOCK_R)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    dim_ok = dims < d_v
    sbase = stats_ptr + bh * stride_sb + rows * stride_sr
    m = tl.load(sbase, mask=row_ok, other=0.0)
    row_sum = tl.load(sbase + 1, mask=row_ok, other=1.0)
    m = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for c0 in range(0, n_cols, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < n_cols
        a = tl.load(a_ptr + bh * stride_ab + rows[:, None] * stride_ar + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
        p = tl.exp(a - m[:, None])  # exp(A - m): registers only
        v = tl.load(v_ptr + bh * stride_vb + cols[:, None] * stride_vr + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        if v.dtype == tl.float32:
            acc += tl.dot(p, v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
    out = acc / row_sum[:, None]
    tl.store(out_ptr + bh * stride_ob + rows[:, None] * stride_or + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def row_stats_triton(scores: torch.Tensor, block_r: int = 16, block_c: int = 256) -> torch.Tensor:
    """scores [BH, N, M] (last dim contiguous) -> [BH, N, 2] float32 (row max, sum exp(a - max))."""
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    bh, n_rows, n_cols = scores.shape
    stats = torch.empty(bh, n_rows, 2, device=scores.device, dtype=torch.float32)
    grid = (bh, triton.cdiv(n_rows, block_r))
    _row_stats_kernel[grid](scores, stats, n_rows, n_cols, scores.stride(0), scores.stride(1), stats.stride(0),
                            stats.stride(1), BLOCK_R=block_r, BLOCK_C=block_c)
    return stats


def exp_matmul_triton(scores: torch.Tensor, value: torch.Tensor, stats: torch.Tensor,
                      block_r: int = 32, block_c: int = 64) -> torch.Tensor:
    """(exp(scores - m) @ value) / l. scores [BH, N, M], value [BH, M, d_v], stats [BH, N, 2] -> [BH, N, d_v]."""
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    bh, n_rows, n_cols = scores.shape
    d_v = value.shape[-1]
    out = torch.empty(bh, n_rows, d_v, device=scores.device, dtype=value.dtype)
    block_d = max(16, triton.next_power_of_2(d_v))
    grid = (bh, triton.cdiv(n_rows, block_r))
    _exp_matmul_kernel[grid](scores, value, stats, out, n_rows, n_cols, d_v,
                             scores.stride(0), scores.stride(1), value.stride(0), value.stride(1),
                             stats.stride(0), stats.stride(1), out.stride(0), out.stride(1),
                             BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_D=block_d)
    return out


def partial_softmax_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                                     mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q [B, H, N, d], k [B, H, M, d], v [B, H, M, d_v]; mask additive, broadcastable to [B, H, N, M]."""
    batch, heads, n_rows, head_dim = query.shape
    n_cols, d_v = key.shape[-2], value.shape[-1]
    q3 = query.reshape(batch * heads, n_rows, head_dim)
    k3 = key.expand(batch, heads, n_cols, head_dim).reshape(batch * heads, n_cols, head_dim)
    v3 = value.expand(batch, heads, n_cols, d_v).reshape(batch * heads, n_cols, d_v)
    scores = torch.bmm(q3 * scale, k3.transpose(1, 2))  # A: [B*H, N, M], materialized (cuBLAS)
    if mask is not None:
        scores = (scores.view(batch, heads, n_rows, n_cols) + mask).view(batch * heads, n_rows, n_cols)
    stats = row_stats_triton(scores)  # [B*H, N, 2]
    out = exp_matmul_triton(scores, v3, stats)
    return out.view(batch, heads, n_rows, d_v)
