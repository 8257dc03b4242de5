"""CPU (plain PyTorch) implementations of the fused operators of the passes, and their references.

Each function is the best this checkout found on a CPU without generating code: plain PyTorch, or the oneDNN
ops inductor itself emits for frozen graphs (:func:`linear`). What is and is not fused is stated per function;
the CUDA versions are one Triton kernel each (:mod:`genscope.passes.kernels.triton_kernels`).

Inductor-generated kernels were measured and are not used (issue 13): ``torch.compile`` of
``silu(group_norm(x))`` alone (``dynamic=False``, gcc/g++ present, ``TORCHINDUCTOR_CACHE_DIR`` on disk) took
200 s for the first shape and 18-24 s for each further one on this checkout's 2 shared cores - about ten
GroupNorm shapes in the SD UNet would blow the 60 s decision budget on a new machine - and its kernel was not
reliably faster than ATen's GroupNorm + in-place SiLU under that load (80-144 ms vs 96-138 ms at
[2, 320, 32, 32] / [2, 640, 16, 16], fp32, either layout, interleaved).

Why hand-written: PyTorch has no fused GroupNorm+SiLU, GEGLU or Winograd convolution operator on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genscope.passes.kernels.winograd_math import kron_transforms

# ----------------------------------------------------------------------------------------------------
# Linear through oneDNN
# ----------------------------------------------------------------------------------------------------
ONEDNN_LINEAR_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN ops run inside these ranges, so that a profiler charges them to their class (genscope.instrument's
# attribution reads genscope::<class>::... ranges; free without a profiler)
LINEAR_RANGE = "genscope::linear::onednn"
CONV_RANGE = "genscope::convolution::onednn"


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` through oneDNN's matmul with the bias as a post-op (``torch.ops.mkldnn._linear_pointwise``,
    the op inductor emits for frozen CPU linears) where it runs: CPU, float32 / bfloat16, no autograd.

    Measured on this checkout's Intel Xeon (2 threads, 9 interleaved rounds, float32): 1.2-2.1x faster than
    ``F.linear`` on SD UNet shapes ([2, 1024, 320] x [1280, 320]^T: 89 vs 160 ms under load) and bit-identical
    on contiguous inputs. Elsewhere: ``F.linear``.
    """
    if (x.device.type == "cpu" and x.dtype in ONEDNN_LINEAR_DTYPES and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype) and x.dim() >= 2 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and onednn_linear_available()):
        with torch.profiler.record_function(LINEAR_RANGE):  # an op-class table does not know the mkldnn op
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


# ----------------------------------------------------------------------------------------------------
# GroupNorm (+ SiLU)
# ----------------------------------------------------------------------------------------------------
def group_norm_silu(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float, silu: bool = True) -> torch.Tensor:
    """SiLU(GroupNorm(x)) with one output tensor and no intermediate. x: [N, C, *spatial].

    CPU: ATen's ``native_group_norm`` is already one kernel (a statistics sweep, then one normalize+affine
    sweep that writes the output); the SiLU is then applied **in place** on that output, so the only tensor
    allocated is the output (the unfused pair allocates two). Not fused on CPU: the SiLU is a third sweep
    over the data (in cache for the slices ATen's kernel parallelizes over, but a separate sweep).
    """
    y = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(y, inplace=True) if silu else y


def group_norm_silu_reference(x, groups, weight, bias, eps, silu=True):
    """The unfused module pair (diffusers: ``norm1`` then ``nonlinearity``)."""
    y = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(y) if silu else y


# ----------------------------------------------------------------------------------------------------
# GEGLU (diffusers' FeedForward activation: proj -> split -> x * gelu(gate))
# ----------------------------------------------------------------------------------------------------
def geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """diffusers ``GEGLU``: ``h, gate = (x W^T + b).chunk(2, -1); h * gelu(gate)`` with fewer tensors.

    x: [..., D]; weight: [2F, D] -> [..., F]. The projection is computed as two GEMMs on the two halves of
    the weight (row slices of one weight: no copy; through oneDNN, :func:`linear`), so that the split costs
    nothing; GELU is applied in
    place on the gate and the product is formed in place: tensors allocated = the two halves (the unfused
    module allocates the [.., 2F] projection, the GELU output and the product).
    Not fused on CPU: GELU and the multiply are two in-place sweeps.
    """
    half = weight.shape[0] // 2
    w_h, w_g = weight[:half], weight[half:]  # [F, D] each, contiguous row slices
    b_h, b_g = (bias[:half], bias[half:]) if bias is not None else (None, None)
    gate = linear(x, w_g, b_g)
    gate = torch.ops.aten.gelu_(gate)
    return gate.mul_(linear(x, w_h, b_h))


def geglu_reference(x, weight, bias):
    h, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return h * F.gelu(gate)


# ----------------------------------------------------------------------------------------------------
# Winograd convolution F(m x m, 3 x 3), stride 1
# ----------------------------------------------------------------------------------------------------
def bmm_fp32_accumulate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 16-bit a, b with float32 accumulation and a float32 result.

    CUDA: ``torch.bmm(..., out_dtype=torch.float32)`` (cuBLAS with 16-bit inputs and fp32 compute/output).
    CPU: no ATen CPU kernel takes 16-bit operands and writes float32 (``aten::bmm.dtype`` has no CPU
    backend in torch 2.13), so the operands are widened to float32 first: the product of two 16-bit numbers is
    exact in float32, so the result equals a 16-bit-input, fp32-accumulate GEMM - at float32 GEMM speed.
    """
    if a.is_cuda:
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return torch.bmm(a.float(), b.float())


U_BLOCK_ELEMENTS = 1 << 20  # float64 weight elements transformed at once (8 MB)


def winograd_weight(weight: torch.Tensor, m: int, dtype: torch.dtype | None = None,
                    variant: str = "accurate") -> torch.Tensor:
    """U = G g G^T for every (output, input) channel pair: weight [K, C, 3, 3] -> [a^2, K, C] (a = m + 2).

    Computed in float64 and rounded once to ``dtype`` (default: the weight's dtype), a block of output
    channels at a time (:data:`U_BLOCK_ELEMENTS` float64 weights per block): the float64 intermediates stay
    small instead of 8/4 x the layer's U (bit-identical; 0.39 vs 0.53 s warm, 0.41 vs 1.25 s cold for a
    1280x2560 layer on the 2-core development VM).
    """
    out_channels, in_channels = weight.shape[:2]
    _, kg, _ = kron_transforms(m, torch.float64, weight.device, variant)  # [a^2, 9]
    u = torch.empty(kg.shape[0], out_channels, in_channels, dtype=dtype or weight.dtype, device=weight.device)
    block = max(1, U_BLOCK_ELEMENTS // (9 * in_channels))
    w = weight.detach()
    for k0 in range(0, out_channels, block):
        g = w[k0:k0 + block].to(torch.float64).permute(2, 3, 0, 1).reshape(9, -1)  # [9, k*C]
        u[:, k0:k0 + block] = (kg @ g).view(kg.shape[0], -1, in_channels)  # [a^2, k, C]
    return u


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, m: int,
                    padding: tuple[int, int] = (1, 1), transform_dtype: torch.dtype | None = None,
                    variant: str = "accurate", accumulate_fp32: bool = False) -> torch.Tensor:
    """3x3 stride-1 convolution of x [N, C, H, W] by Winograd F(m x m, 3 x 3) with precomputed U [a^2, K, C].

    Steps (tiles of a x a inputs, a = m + 2, overlapping by 2; P = N * tiles_h * tiles_w):
    1. gather the tiles: D [a^2, C, P] (one copy; (a/m)^2 x the input);
    2. input transform V = kron(B^T, B^T) @ D: one GEMM [a^2, a^2] x [a^2, C*P];
    3. elementwise stage as a batched GEMM: M[t] = U[t] @ V[t] for the a^2 tile positions: [a^2, K, P];
    4. output transform Y = kron(A^T, A^T) @ M: one GEMM [m^2, a^2] x [a^2, K*P]; scatter to [N, K, Ho, Wo].
    The steps run with C (and K) innermost ([a^2, P, C] @ [a^2, C, K]), which makes the gather and the scatter
    contiguous: an NCHW input is converted to channels-last first (one copy) and the output converted back;
    the output keeps the input's memory format.
    Transforms run in ``transform_dtype`` (default: float32 for 16-bit inputs, else the input dtype); the
    product runs in U's dtype; with ``accumulate_fp32`` (16-bit U) its operands stay 16-bit but it accumulates
    and returns float32 (:func:`bmm_fp32_accumulate`). ``variant``: the transforms' points (must match U's).
    """
    if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        # NCHW input: convert once and run the channels-last path (its tile gather and scatter are contiguous);
        # measured 4-14 % faster than gathering from NCHW on SD layer shapes (2 threads, float32)
        y = winograd_conv2d(x.contiguous(memory_format=torch.channels_last), u, bias, m, padding, transform_dtype,
                            variant, accumulate_fp32)
        return y.contiguous()
    n, c, h, w = x.shape
    a = m + 2
    ph, pw = padding
    out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    pad_h, pad_w = tiles_h * m + 2, tiles_w * m + 2
    k_out = u.shape[1]
    p = n * tiles_h * tiles_w
    tdtype = transform_dtype or (torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype)
    kb, _, ka = kron_transforms(m, tdtype, x.device, variant)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    xp = F.pad(x, (pw, pad_w - w - pw, ph, pad_h - h - ph))  # [N, C, pad_h, pad_w] (keeps the memory format)
    tiles = xp.unfold(2, a, m).unfold(3, a, m)  # view [N, C, th, tw, a, a]
    if channels_last:
        d = tiles.permute(4, 5, 0, 2, 3, 1).reshape(a * a, p * c)  # [a^2, (P, C)]: C innermost
    else:
        d = tiles.permute(4, 5, 1, 0, 2, 3).reshape(a * a, c * p)  # [a^2, (C, P)]: tiles innermost
    del tiles, xp  # each intermediate is released as soon as the next exists (peak: two of them)
    v = (kb @ d.to(tdtype)).to(u.dtype)  # V = B^T d B for every tile: [a^2, *]
    del d
    bmm = bmm_fp32_accumulate if accumulate_fp32 and u.dtype != torch.float32 else torch.bmm
    if channels_last:
        prod = bmm(v.view(a * a, p, c), u.transpose(1, 2))  # [a^2, P, K]
    else:
        prod = bmm(u, v.view(a * a, c, p))  # [a^2, K, P]
    del v
    y = ka @ prod.reshape(a * a, -1).to(tdtype)  # Y = A^T M A: [m^2, *]
    del prod
    if channels_last:
        y = y.view(m, m, n, tiles_h, tiles_w, k_out).permute(2, 3, 0, 4, 1, 5)  # [N, th, m, tw, m, K]
        y = y.reshape(n, tiles_h * m, tiles_w * m, k_out)  # the scatter (one copy, K innermost)
        if bias is not None:
            y.add_(bias.to(y.dtype))
        y = y[:, :out_h, :out_w].to(x.dtype).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        return y.contiguous(memory_format=torch.channels_last)
    y = y.view(m, m, k_out, n, tiles_h, tiles_w).permute(3, 2, 4, 0, 5, 1)  # [N, K, th, m, tw, m]
    y = y.reshape(n, k_out, tiles_h * m, tiles_w * m)  # the scatter (one copy)
    if bias is not None:
        y.add_(bias.to(y.dtype).view(1, -1, 1, 1))
    return y[:, :, :out_h, :out_w].to(x.dtype).contiguous()
