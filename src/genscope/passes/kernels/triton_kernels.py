"""CUDA implementations of the passes as Triton kernels (imported only when Triton can run).

Import this module only after :func:`genscope.models.layers.triton_support.triton_available` said yes;
it imports ``triton`` at module level. Each kernel is the one-launch form of Chen et al. 2023's shaders:

* :func:`group_norm_silu_triton` - GroupNorm (+ SiLU): one program per (sample, group); a first loop
  accumulates sum and sum of squares in float32, a second loop normalizes, applies the per-channel affine
  and the SiLU and stores: the input is read twice, the output written once, no intermediate tensor.
* :func:`geglu_triton` - the split, the GELU (erf form) and the multiply of diffusers' ``GEGLU`` in one
  elementwise kernel over the projection's output (reads [.., 2F], writes [.., F]).
* :func:`winograd_input_transform_triton` / :func:`winograd_output_transform_triton` - Winograd's tile
  gather + B^T d B (and A^T M A + bias + crop + scatter) as one kernel each; the a^2 independent products
  between them are one batched cuBLAS GEMM (``torch.bmm``).

Untested on a GPU in this checkout (the machine it was written on has neither a CUDA device nor the
triton package); ``tests/test_passes.py`` runs the kernels under ``TRITON_INTERPRET=1`` where triton is
installed, and on CUDA where there is one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genscope.passes.kernels.winograd_math import kron_transforms


# ----------------------------------------------------------------------------------------------------
# GroupNorm + SiLU
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _group_norm_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, group_size, hw, channels, channels_per_group, groups,
                            eps, HAS_AFFINE: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)  # = sample * groups + group
    group = pid % groups
    base = pid.to(tl.int64) * group_size  # NCHW contiguous: a group is one contiguous span
    offs = tl.arange(0, BLOCK)
    acc_sum = tl.zeros([BLOCK], tl.float32)
    acc_sq = tl.zeros([BLOCK], tl.float32)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        ok = idx < group_size
        x = tl.load(x_ptr + base + idx, mask=ok, other=0.0).to(tl.float32)
        acc_sum += x
        acc_sq += x * x
    mean = tl.sum(acc_sum, axis=0) / group_size
    var = tl.maximum(tl.sum(acc_sq, axis=0) / group_size - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        ok = idx < group_size
        x = tl.load(x_ptr + base + idx, mask=ok, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_AFFINE:
            channel = group * channels_per_group + idx // hw
            gamma = tl.load(w_ptr + channel, mask=ok, other=1.0).to(tl.float32)
            beta = tl.load(b_ptr + channel, mask=ok, other=0.0).to(tl.float32)
            y = y * gamma + beta
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=ok)


def group_norm_silu_triton(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           eps: float, silu: bool = True, block: int = 1024) -> torch.Tensor:
    """x [N, C, *spatial] -> SiLU(GroupNorm(x)) (or GroupNorm alone with ``silu=False``), one launch."""
    x = x.contiguous()
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    cpg = c // groups
    y = torch.empty_like(x)
    has_affine = weight is not None
    w = weight if has_affine else x  # unused pointers when there is no affine
    b = bias if bias is not None else (torch.zeros_like(weight) if has_affine else x)
    _group_norm_silu_kernel[(n * groups,)](x, w, b, y, cpg * hw, hw, c, cpg, groups, eps,
                                           HAS_AFFINE=has_affine, SILU=silu, BLOCK=block)
    return y


# ----------------------------------------------------------------------------------------------------
# GEGLU: split + GELU + multiply
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _geglu_kernel(h_ptr, y_ptr, n_out, width, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n_out
    row = idx // width
    col = idx % width
    src = row * (2 * width) + col
    hidden = tl.load(h_ptr + src, mask=ok, other=0.0).to(tl.float32)
    gate = tl.load(h_ptr + src + width, mask=ok, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))
    tl.store(y_ptr + idx, (hidden * gelu).to(y_ptr.dtype.element_ty), mask=ok)


def geglu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block: int = 1024) -> torch.Tensor:
    """diffusers GEGLU: projection (cuBLAS) then one kernel for split, GELU and multiply. x [..., D] -> [..., F]."""
    h = torch.nn.functional.linear(x, weight, bias).contiguous()  # [..., 2F]
    width = h.shape[-1] // 2
    y = torch.empty(*h.shape[:-1], width, device=h.device, dtype=h.dtype)
    n_out = y.numel()
    _geglu_kernel[(triton.cdiv(n_out, block),)](h, y, n_out, width, BLOCK=block)
    return y


# ----------------------------------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3): input and output transforms
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _winograd_input_kernel(x_ptr, kb_ptr, v_ptr, channels, height, width, tiles_h, tiles_w, n_tiles,
                           pad_h, pad_w, M: tl.constexpr, A: tl.constexpr, A2: tl.constexpr, A2P: tl.constexpr,
                           BLOCK_T: tl.constexpr):
    """One program: BLOCK_T (tile, channel) pairs. V[:, c, p] = kron(B^T, B^T) @ d(c, p)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # flattened (c, p)
    total = channels * n_tiles
    row_ok = rows < total
    c = rows // n_tiles
    p = rows % n_tiles
    tiles_per_img = tiles_h * tiles_w
    img = p // tiles_per_img
    t = p % tiles_per_img
    th = t // tiles_w
    tw = t % tiles_w
    e = tl.arange(0, A2P)  # element of the tile, row-major (u, v)
    u = e // A
    v = e % A
    e_ok = e < A2
    hh = th[:, None] * M + u[None, :] - pad_h
    ww = tw[:, None] * M + v[None, :] - pad_w
    inside = (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width) & row_ok[:, None] & e_ok[None, :]
    src = ((img[:, None] * channels + c[:, None]) * height + hh) * width + ww
    d = tl.load(x_ptr + src, mask=inside, other=0.0).to(tl.float32)  # [BLOCK_T, A2P]
    # kb_ptr holds kron(B^T, B^T)^T padded to [A2P, A2P] (float32)
    kk = tl.arange(0, A2P)
    kbt = tl.load(kb_ptr + kk[:, None] * A2P + kk[None, :])
    vt = tl.dot(d, kbt, input_precision="ieee")  # [BLOCK_T, A2P]: row = (c, p), column = tile position
    dst = e[None, :] * total + rows[:, None]  # V laid out [a^2, C, P]
    tl.store(v_ptr + dst, vt.to(v_ptr.dtype.element_ty), mask=row_ok[:, None] & e_ok[None, :])


@triton.jit
def _winograd_output_kernel(m_ptr, ka_ptr, bias_ptr, y_ptr, out_channels, out_h, out_w, tiles_h, tiles_w,
                            n_tiles, HAS_BIAS: tl.constexpr, M: tl.constexpr, A2: tl.constexpr,
                            A2P: tl.constexpr, M2P: tl.constexpr, BLOCK_T: tl.constexpr):
    """One program: BLOCK_T (output channel, tile) pairs. Y(k, p) = kron(A^T, A^T) @ M[:, k, p] (+ bias)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # flattened (k, p)
    total = out_channels * n_tiles
    row_ok = rows < total
    k = rows // n_tiles
    p = rows % n_tiles
    e = tl.arange(0, A2P)
    mvals = tl.load(m_ptr + e[None, :] * total + rows[:, None], mask=row_ok[:, None] & (e[None, :] < A2),
                    other=0.0).to(tl.float32)  # [BLOCK_T, A2P]
    oo = tl.arange(0, M2P)
    # ka_ptr holds kron(A^T, A^T)^T padded to [A2P, M2P] (float32)
    kat = tl.load(ka_ptr + e[:, None] * M2P + oo[None, :])
    y = tl.dot(mvals, kat, input_precision="ieee")  # [BLOCK_T, M2P]
    if HAS_BIAS:
        y += tl.load(bias_ptr + k, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    tiles_per_img = tiles_h * tiles_w
    img = p // tiles_per_img
    t = p % tiles_per_img
    th = t // tiles_w
    tw = t % tiles_w
    i = oo // M
    j = oo % M
    hh = th[:, None] * M + i[None, :]
    ww = tw[:, None] * M + j[None, :]
    ok = row_ok[:, None] & (oo[None, :] < M * M) & (hh < out_h) & (ww < out_w)
    dst = ((img[:, None] * out_channels + k[:, None]) * out_h + hh) * out_w + ww
    tl.store(y_ptr + dst, y.to(y_ptr.dtype.element_ty), mask=ok)


def _padded(mat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    out = torch.zeros(rows, cols, dtype=torch.float32, device=mat.device)
    out[: mat.shape[0], : mat.shape[1]] = mat
    return out.contiguous()


def winograd_conv2d_triton(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, m: int,
                           padding: tuple[int, int] = (1, 1), block_t: int = 64) -> torch.Tensor:
    """x [N, C, H, W] (NCHW), U [a^2, K, C] -> [N, K, Ho, Wo]: transform kernel, cuBLAS bmm, transform kernel."""
    x = x.contiguous()
    n, c, h, w = x.shape
    a = m + 2
    a2 = a * a
    a2p = max(16, triton.next_power_of_2(a2))
    m2p = max(16, triton.next_power_of_2(m * m))
    ph, pw = padding
    out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
    tiles_h, tiles_w = triton.cdiv(out_h, m), triton.cdiv(out_w, m)
    n_tiles = n * tiles_h * tiles_w
    k_out = u.shape[1]
    kb, _, ka = kron_transforms(m, torch.float32, x.device)
    kbt = _padded(kb.t(), a2p, a2p)  # [A2P, A2P]
    kat = _padded(ka.t(), a2p, m2p)  # [A2P, M2P]
    v = torch.empty(a2, c, n_tiles, device=x.device, dtype=u.dtype)
    _winograd_input_kernel[(triton.cdiv(c * n_tiles, block_t),)](
        x, kbt, v, c, h, w, tiles_h, tiles_w, n_tiles, ph, pw, M=m, A=a, A2=a2, A2P=a2p, BLOCK_T=block_t)
    prod = torch.bmm(u, v)  # [a^2, K, P]
    y = torch.empty(n, k_out, out_h, out_w, device=x.device, dtype=x.dtype)
    has_bias = bias is not None
    _winograd_output_kernel[(triton.cdiv(k_out * n_tiles, block_t),)](
        prod, kat, bias if has_bias else prod, y, k_out, out_h, out_w, tiles_h, tiles_w, n_tiles,
        HAS_BIAS=has_bias, M=m, A2=a2, A2P=a2p, M2P=m2p, BLOCK_T=block_t)
    return y
