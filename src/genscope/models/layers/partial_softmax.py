"""Partially fused softmax attention: the ``partial_softmax`` backend of the attention entry point.

Chen et al., "Speed Is All You Need: On-Device Acceleration of Large Diffusion Models via GPU-Aware
Optimizations" (CVPR-W 2023; /work/shared/papers/speed-is-all-you-need.txt), Section 3.2.1 and Figure 2:
softmax(A) @ V with A = scale * Q K^T is split into

1. a **reduction** over each row of A: ``m_i = max_j a_ij`` and ``l_i = sum_j exp(a_ij - m_i)`` - an
   ``N x 2`` tensor (here ``[B*heads, N, 2]``, returned by :func:`softmax_row_stats`);
2. the **element-wise normalization fused into the matmul with V**: ``out = (exp(A - m) @ V) / l``.

The normalized probability matrix softmax(A) is never stored (the baseline backend allocates it next to A).

Implementations
* CPU (``torch``): A is computed in blocks of query rows so that each block of A stays in cache (the
  paper's "multi-stage" reduction over blocks); per block: ``A_blk = (scale*Q_blk) @ K^T`` (the scale is
  folded into Q, an ``N x d`` operation instead of ``N x M``), ``m = amax``, ``exp(A_blk - m)`` **in place**,
  ``l = sum``, ``out_blk = (exp(A_blk - m) @ V) / l``. What is fused on CPU: the normalization moves from
  the ``N x M`` matrix to the ``N x d`` output, and no second ``N x M`` matrix is allocated. What is not:
  PyTorch has no GEMM with an ``exp`` prologue, so ``exp(A - m)`` is computed in place over the block
  (subtract, then exp) before the matmul, and ``l`` reads it back from cache.
* CUDA (Triton, guarded by :mod:`genscope.models.layers.triton_support`): A from cuBLAS (materialized,
  as in the paper), one kernel for the row statistics (each program reduces a block of rows with an
  online max/sum over column blocks: one launch), one kernel that computes ``exp(A - m) @ V / l`` tile by
  tile (the exponentials live in registers only).

Why hand-written: no library offers this split (SDPA is either the math path, which materializes the
normalized matrix, or a fully fused flash kernel).
"""

from __future__ import annotations

import torch

from genscope.models.layers.attention_backends import additive_mask, flatten_heads, register_backend
from genscope.models.layers.triton_support import triton_available

# Target bytes of one block of A on CPU. Measured on [2, 8, 4096, 40] float32 (SD's 64x64 self-attention), one
# thread of a 2-core AMD EPYC (32 MB L3): 4 MB blocks (16 rows) 3.4 s, 32 MB (128 rows) 2.9 s, 256 KB 4.3 s, the
# baseline (whole 1 GB matrix twice) 3.8 s, SDPA's flash kernel 1.2 s.
CPU_BLOCK_BYTES = 32 * 2**20


def _mask_block(mask: torch.Tensor | None, batch: int, heads: int, rows: slice, key_len: int):
    """The additive mask for a block of query rows: [B*H, rows, M] (a copy of the block only)."""
    if mask is None:
        return None
    full = mask.expand(batch, heads, mask.shape[-2] if mask.dim() >= 2 else 1, key_len)
    if full.shape[-2] != 1:
        full = full[:, :, rows]
    return full.reshape(batch * heads, full.shape[-2], key_len)


def block_rows_for(bh: int, key_len: int, element_size: int, block_bytes: int = CPU_BLOCK_BYTES) -> int:
    """Query rows per block so that a block of A ([B*H, rows, M]) takes about ``block_bytes``."""
    return max(1, block_bytes // max(1, bh * key_len * element_size))


def partial_softmax_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    block_rows: int | None = None,
) -> torch.Tensor:
    """Attention with the partially fused softmax. q: [B, H, N, d]; k: [B, H, M, d]; v: [B, H, M, d_v].

    ``block_rows``: query rows per block on CPU (default: about :data:`CPU_BLOCK_BYTES` of A per block;
    ``block_rows >= N`` is the paper's unblocked form). Returns [B, H, N, d_v].
    """
    if query.device.type == "meta":
        return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device="meta")
    batch, heads, query_len, head_dim = query.shape
    key_len = key.shape[-2]
    scale = head_dim**-0.5 if scale is None else scale
    mask = additive_mask(attn_mask, is_causal, query_len, key_len, query.dtype, query.device)
    if mask is not None and mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if query.device.type == "cuda" and triton_available(query.device) and block_rows is None:
        from genscope.models.layers import partial_softmax_triton as kt

        return kt.partial_softmax_attention_triton(query, key, value, mask=mask, scale=scale)
    q3, k3, v3 = flatten_heads(query, key, value)
    q3 = q3 * scale  # [B*H, N, d]: the scale folded into Q (N*d multiplies instead of N*M)
    k3t = k3.transpose(1, 2)  # [B*H, d, M]
    bh = q3.shape[0]
    rows = block_rows or block_rows_for(bh, key_len, query.element_size())
    outs = []
    for start in range(0, query_len, rows):
        sl = slice(start, min(start + rows, query_len))
        scores = torch.bmm(q3[:, sl], k3t)  # A_blk: [B*H, rows, M]
        block_mask = _mask_block(mask, batch, heads, sl, key_len)
        if block_mask is not None:
            scores.add_(block_mask)
        row_max = scores.amax(dim=-1, keepdim=True)  # m: [B*H, rows, 1]   (reduction 1)
        torch.exp(scores.sub_(row_max), out=scores)  # exp(A - m), in place: no second N x M matrix
        row_sum = scores.sum(dim=-1, keepdim=True, dtype=torch.float32)  # l: [B*H, rows, 1]  (reduction 2)
        out = torch.bmm(scores, v3)  # [B*H, rows, d_v]
        del scores
        outs.append(out.div_(row_sum.to(out.dtype)))  # the normalization, on the N x d_v output
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out.reshape(batch, heads, query_len, value.shape[-1])


def softmax_row_stats(scores: torch.Tensor) -> torch.Tensor:
    """The reduction step alone: scores [..., N, M] -> [..., N, 2] = (row max m, sum exp(a - m)) in float32."""
    s = scores.float()
    row_max = s.amax(dim=-1, keepdim=True)
    row_sum = (s - row_max).exp().sum(dim=-1, keepdim=True)
    return torch.cat([row_max, row_sum], dim=-1)


def _kernel(query, key, value, attn_mask, is_causal) -> str:
    """``triton`` (CUDA with Triton), ``blocked`` (the CPU torch form) or ``meta``."""
    if query.device.type == "meta":
        return "meta"
    return "triton" if query.device.type == "cuda" and triton_available(query.device) else "blocked"


register_backend("partial_softmax", partial_softmax_attention, _kernel,
                 "Chen et al. 2023: row max/sum reduction, normalization fused into the matmul with V")
