"""Every Triton kernel of genscope, run on the CPU by Triton's interpreter, against plain PyTorch.

``TRITON_INTERPRET=1`` must be in the environment before ``triton`` is first imported (``@triton.jit``
decides then whether it builds an interpreted function), and the rest of the test session imports triton
without it; so the kernels run in one child Python process started with the variable set, which prints
one relative error per case as JSON. The references are torch's own operators (``F.group_norm``,
``F.gelu``, ``F.conv2d``, an explicit softmax), not genscope's CPU kernels, so a shared mistake cannot
hide. triton is a dev dependency (pyproject.toml): if it is missing these tests fail, they do not skip.
On a CUDA machine the same script also runs on the GPU (``gpu`` marker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from genscope.models.layers.triton_support import triton_installed

# One case per (kernel, shape family): odd sizes that are not multiples of the block, with and without the
# optional parts (affine, bias, mask), and every Winograd tile size.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.nn.functional as F
    from genscope.models.layers import partial_softmax_triton as pst
    from genscope.passes.kernels import triton_kernels as tk
    from genscope.passes.kernels.cpu import winograd_weight
    from genscope.passes.kernels.winograd_math import TILES

    device = sys.argv[1]
    gen = torch.Generator().manual_seed(0)
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    def rel(got, want):
        got, want = got.double().cpu(), want.double()
        return float((got - want).norm() / want.norm())
    f32 = lambda t: t.float().to(device)
    errors = {}

    # GroupNorm (+ SiLU): [N, C, H, W], 4 groups; the group span 4*5*7=140 is not a multiple of block 64
    x, w, b = randn(2, 16, 5, 7), randn(16), randn(16)
    ref = F.group_norm(x, 4, w, b, 1e-5)
    errors["group_norm_silu"] = rel(tk.group_norm_silu_triton(f32(x), 4, f32(w), f32(b), 1e-5, block=64), F.silu(ref))
    errors["group_norm_no_silu"] = rel(tk.group_norm_silu_triton(f32(x), 4, f32(w), f32(b), 1e-5, silu=False, block=64), ref)
    errors["group_norm_no_affine"] = rel(tk.group_norm_silu_triton(f32(x), 4, None, None, 1e-5, block=64),
                                         F.silu(F.group_norm(x, 4, None, None, 1e-5)))
    x3 = randn(1, 6, 3, 3, 3)  # a 3-D (video) feature map, 3 groups of 2 channels
    errors["group_norm_5d"] = rel(tk.group_norm_silu_triton(f32(x3), 3, None, None, 1e-6, block=16),
                                  F.silu(F.group_norm(x3, 3, None, None, 1e-6)))

    # GEGLU: h, gate = (x W^T + b).chunk(2); h * gelu(gate) (erf form); 3*20 outputs, block 64
    h, wg, bg = randn(3, 16), randn(40, 16), randn(40)
    for name, bias in (("geglu", bg), ("geglu_no_bias", None)):
        hidden, gate = F.linear(h, wg, bias).chunk(2, dim=-1)
        errors[name] = rel(tk.geglu_triton(f32(h), f32(wg), None if bias is None else f32(bias), block=64),
                           hidden * F.gelu(gate))
    hb = randn(2, 5, 16)  # leading batch dimensions
    hidden, gate = F.linear(hb, wg, bg).chunk(2, dim=-1)
    errors["geglu_batched"] = rel(tk.geglu_triton(f32(hb), f32(wg), f32(bg), block=32), hidden * F.gelu(gate))

    # Winograd F(m x m, 3 x 3): input transform kernel, bmm, output transform kernel; 9x11 is no tile multiple
    xc, wc, bc = randn(2, 3, 9, 11), randn(4, 3, 3, 3), randn(4)
    for m in TILES:
        u = winograd_weight(f32(wc), m)
        errors[f"winograd_m{m}"] = rel(tk.winograd_conv2d_triton(f32(xc), u, None, m, block_t=16),
                                       F.conv2d(xc, wc, padding=1))
        errors[f"winograd_m{m}_bias_pad0"] = rel(
            tk.winograd_conv2d_triton(f32(xc), u, f32(bc), m, padding=(0, 0), block_t=16),
            F.conv2d(xc, wc, bc, padding=0))

    # Partial softmax: row statistics, then exp(A - m) @ V / l; 33 query rows (not a multiple of 16 or 32)
    q, k, v = randn(1, 2, 33, 16), randn(1, 2, 20, 16), randn(1, 2, 20, 8)
    scores = 0.25 * q @ k.transpose(-1, -2)  # [1, 2, 33, 20]
    stats = pst.row_stats_triton(f32(scores.reshape(2, 33, 20)))  # [2, 33, 2]: max, sum exp(a - max)
    row_max = scores.amax(-1).reshape(2, 33)
    errors["row_stats_max"] = rel(stats[..., 0], row_max)
    errors["row_stats_sum"] = rel(stats[..., 1], (scores.reshape(2, 33, 20) - row_max[..., None]).exp().sum(-1))
    errors["partial_softmax"] = rel(pst.partial_softmax_attention_triton(f32(q), f32(k), f32(v), mask=None, scale=0.25),
                                    scores.softmax(-1) @ v)
    mask = torch.zeros(1, 1, 33, 20, dtype=torch.float64)
    mask[..., 15:] = float("-inf")  # additive mask: the last 5 keys hidden
    errors["partial_softmax_masked"] = rel(
        pst.partial_softmax_attention_triton(f32(q), f32(k), f32(v), mask=f32(mask), scale=0.25),
        (scores + mask).softmax(-1) @ v)
    print(json.dumps(errors))
    """
)

# float32 kernels against float64 references: a few ulp of float32 (1.2e-7) times a small accumulation
# depth; the Winograd transforms amplify rounding by the norms of their matrices (Lavin & Gray 2016), which
# grow with the tile: F(6x6, 3x3) is the largest used here.
TOLERANCE = {"winograd_m6": 1e-4, "winograd_m6_bias_pad0": 1e-4}
DEFAULT_TOLERANCE = 1e-5
EXPECTED_CASES = {
    "group_norm_silu", "group_norm_no_silu", "group_norm_no_affine", "group_norm_5d",
    "geglu", "geglu_no_bias", "geglu_batched", "row_stats_max", "row_stats_sum",
    "partial_softmax", "partial_softmax_masked",
    *(f"winograd_m{m}{suffix}" for m in (2, 4, 6) for suffix in ("", "_bias_pad0")),
}


def _run_kernels(device: str, interpret: bool) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["TRITON_INTERPRET"] = "1" if interpret else "0"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, device], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted_errors() -> dict[str, float]:
    assert triton_installed(), "triton is a dev dependency: pip install -e '.[dev]'"
    return _run_kernels("cpu", interpret=True)


@pytest.mark.slow  # about 15 s: one child process interprets every kernel
def test_every_kernel_ran(interpreted_errors):
    assert set(interpreted_errors) == EXPECTED_CASES


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(EXPECTED_CASES))
def test_interpreted_kernel_matches_torch(interpreted_errors, case):
    assert interpreted_errors[case] < TOLERANCE.get(case, DEFAULT_TOLERANCE), interpreted_errors[case]


@pytest.mark.gpu
def test_compiled_kernels_match_torch_on_cuda():
    assert torch.cuda.is_available()
    errors = _run_kernels("cuda", interpret=False)
    assert set(errors) == EXPECTED_CASES
    bad = {case: e for case, e in errors.items() if not e < 10 * TOLERANCE.get(case, DEFAULT_TOLERANCE)}
    assert not bad, bad  # tensor cores: tl.dot on fp32 runs as ieee here, 10x margin for reduction order
