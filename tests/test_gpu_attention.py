"""CUDA-only checks of the attention entry point: masked and causal calls land on fused kernels.

Skipped without a CUDA GPU. On a GPU: the flash kernel takes no mask, so a masked call must run the
memory-efficient kernel (not the math path); a T5-style permuted bias (last-dim stride = heads) must be
handed over with unit stride; a causal call runs flash without a materialized mask.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from genscope.models.layers.attention import attention, register_call_hook  # noqa: E402


def _qkv(b=2, h=8, lq=256, lk=320, d=64, dtype=torch.float16):
    g = torch.Generator(device="cuda").manual_seed(0)
    return tuple(torch.randn(b, h, n, d, generator=g, device="cuda", dtype=dtype) for n in (lq, lk, lk))


def _reference(q, k, v, mask=None, causal=False):
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return s.softmax(-1) @ v


def _ops(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, {e.name for e in prof.events()}


@pytest.mark.parametrize("case", ["padding_mask", "permuted_bias", "causal", "plain"])
def test_masked_and_causal_calls_run_fused_kernels(case):
    q, k, v = _qkv(lq=320 if case == "causal" else 256)
    kwargs, ref_kwargs, expected = {}, {}, "flash"
    if case == "padding_mask":
        mask = torch.ones(2, 1, 1, 320, dtype=torch.bool, device="cuda")
        mask[1, ..., 200:] = False
        kwargs["attn_mask"] = ref_kwargs["mask"] = mask
        expected = "efficient"
    elif case == "permuted_bias":
        bias = torch.randn(256, 320, 8, device="cuda", dtype=torch.float16).permute(2, 0, 1).unsqueeze(0)
        assert bias.stride(-1) == 8
        kwargs["attn_mask"] = ref_kwargs["mask"] = bias
        expected = "efficient"
    elif case == "causal":
        kwargs["is_causal"] = ref_kwargs["causal"] = True
    calls = []
    with register_call_hook(calls.append):
        out, names = _ops(lambda: attention(q, k, v, backend="flash", **kwargs))
    assert calls[0].kernel == expected
    assert not any("_scaled_dot_product_attention_math" in n for n in names), sorted(names)
    fused = "_efficient_attention" if expected == "efficient" else "_flash_attention"
    assert any(fused in n for n in names), sorted(n for n in names if "attention" in n)
    ref = _reference(q, k, v, **ref_kwargs)
    assert (out.double() - ref).abs().max().item() < 2e-2


def test_baseline_records_materialized_kernel_on_cuda():
    q, k, v = _qkv()
    calls = []
    with register_call_hook(calls.append):
        attention(q, k, v, backend="baseline")
    assert calls[0].kernel == "materialized"
