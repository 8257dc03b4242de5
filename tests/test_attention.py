import copy

import pytest
import torch

from genscope.errors import UserError
from genscope.instrument.memory import track_peak_memory
from genscope.models.layers.attention import (
    attention,
    baseline_attention,
    flash_attention,
    get_backend,
    install_attention,
    register_call_hook,
    use_backend,
)


def _qkv(b=2, h=3, lq=17, lk=23, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


def _reference(q, k, v, mask=None, scale=None, causal=False):
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return (s.softmax(-1) @ v).float()


@pytest.mark.parametrize("case", ["plain", "bool_mask", "additive_mask", "causal", "scale"])
def test_both_backends_match_float64_reference(case):
    q, k, v = _qkv(lq=23 if case == "causal" else 17)
    kwargs, ref_kwargs = {}, {}
    if case == "bool_mask":
        mask = torch.rand(2, 1, 17, 23, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True
        kwargs["attn_mask"] = ref_kwargs["mask"] = mask
    elif case == "additive_mask":
        mask = torch.randn(1, 3, 17, 23)
        kwargs["attn_mask"] = ref_kwargs["mask"] = mask
    elif case == "causal":
        kwargs["is_causal"] = ref_kwargs["causal"] = True
    elif case == "scale":
        kwargs["scale"] = ref_kwargs["scale"] = 0.37
    ref = _reference(q, k, v, **ref_kwargs)
    for fn in (baseline_attention, flash_attention):
        out = fn(q, k, v, **kwargs)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), fn.__name__


def test_backend_switch_and_hooks_see_every_call():
    q, k, v = _qkv()
    calls = []
    with register_call_hook(calls.append):
        with use_backend("baseline"):
            assert get_backend() == "baseline"
            attention(q, k, v, kind="cross")
        attention(q, k, v, kind="self")
    assert [(c.backend, c.kind) for c in calls] == [("baseline", "cross"), ("flash", "self")]
    c = calls[0]
    assert (c.batch, c.heads, c.query_len, c.key_len, c.head_dim) == (2, 3, 17, 23, 8)
    assert c.flops == 2 * c.macs == 4 * 2 * 3 * 17 * 23 * 8
    attention(q, k, v)
    assert len(calls) == 2  # the handle was removed


def test_unknown_backend_is_user_error():
    with pytest.raises(UserError, match="attention backend"):
        with use_backend("fastest"):
            pass


def test_baseline_materializes_the_similarity_matrix():
    q, k, v = _qkv(b=1, h=2, lq=1024, lk=1024, d=16)
    peaks = {}
    for backend in ("baseline", "flash"):
        with torch.inference_mode(), track_peak_memory() as stats:
            attention(q, k, v, backend=backend)
        peaks[backend] = stats.peak_bytes
    sim_bytes = 1 * 2 * 1024 * 1024 * 4
    assert peaks["baseline"] >= sim_bytes
    assert peaks["flash"] < sim_bytes / 4


def test_transformers_llama_with_gqa_routes_through_entry_point_and_matches_eager():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    eager = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    ours = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    ours.load_state_dict(eager.state_dict())
    sites = install_attention(ours, prefix="llm")
    assert len(sites) == 2 and all(s.kind == "causal" for s in sites)
    ids = torch.randint(0, 101, (2, 12))
    calls = []
    with torch.inference_mode(), register_call_hook(calls.append):
        ref = eager(ids).logits
        outs = {}
        for backend in ("baseline", "flash"):
            with use_backend(backend):
                outs[backend] = ours(ids).logits
    assert len(calls) == 4 and {c.heads for c in calls} == {4}
    for out in outs.values():
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_transformers_t5_position_bias_matches_eager():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=101, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    eager = T5EncoderModel._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    ours = T5EncoderModel._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    ours.load_state_dict(eager.state_dict())
    install_attention(ours, prefix="t5")
    ids = torch.randint(0, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.inference_mode():
        ref = eager(ids, attention_mask=mask).last_hidden_state
        for backend in ("baseline", "flash"):
            with use_backend(backend):
                out = ours(ids, attention_mask=mask).last_hidden_state
            assert torch.allclose(out[0], ref[0], atol=1e-5, rtol=1e-4)
            assert torch.allclose(out[1, :6], ref[1, :6], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Masks fused kernels accept, and the kernel each call records (issue 12, item 5)
# ----------------------------------------------------------------------------------------------------
def _permuted_bias(heads=3, lq=17, lk=23, seed=2):
    """An additive bias laid out as T5's position bias: [lq, lk, heads] permuted to [1, heads, lq, lk]."""
    values = torch.randn(lq, lk, heads, generator=torch.Generator().manual_seed(seed))
    return values.permute(2, 0, 1).unsqueeze(0)  # last-dim stride = heads


def test_fused_kernels_get_masks_with_unit_last_stride():
    from genscope.models.layers.attention_backends import fused_kernel, fused_mask

    q, k, v = _qkv()
    bias = _permuted_bias()
    assert bias.stride(-1) == 3  # as built: a fused kernel would refuse it
    assert fused_kernel(q, k, v, bias, False) == "math"
    prepared = fused_mask(bias, q)
    assert prepared.stride(-1) == 1 and torch.equal(prepared, bias)
    assert fused_kernel(q, k, v, prepared, False) == "flash"
    # a broadcast padding mask [B, 1, 1, Lk] is not expanded to [B, heads, Lq, Lk]
    pad = torch.ones(2, 1, 1, 23, dtype=torch.bool)
    assert fused_mask(pad, q).shape == (2, 1, 1, 23)


@pytest.mark.parametrize("backend, kernel", [("baseline", "materialized"), ("flash", "flash"),
                                             ("partial_softmax", "blocked")])
def test_each_call_records_the_kernel_that_ran_and_matches_reference(backend, kernel):
    q, k, v = _qkv()
    bias = _permuted_bias()
    calls = []
    with register_call_hook(calls.append):
        out = attention(q, k, v, attn_mask=bias, backend=backend)
        attention(q, k, v, kind="causal", is_causal=True, backend=backend)
    assert [c.kernel for c in calls] == [kernel, kernel]
    assert calls[1].is_causal and not calls[1].has_mask  # causal without a materialized mask
    assert torch.allclose(out, _reference(q, k, v, mask=bias), atol=1e-5, rtol=1e-4)


def test_flash_on_a_strided_mask_does_not_fall_back_to_math(recwarn):
    q, k, v = _qkv()
    from torch.profiler import profile

    with profile() as prof:
        flash_attention(q, k, v, attn_mask=_permuted_bias())
    names = {e.name for e in prof.events()}
    assert not any("math" in n for n in names), names  # aten::_scaled_dot_product_attention_math
    assert any("flash_attention" in n for n in names), names
    assert not [w for w in recwarn if "no fused attention kernel" in str(w.message)]


def test_transformers_causal_prefill_reaches_entry_point_without_a_mask():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    install_attention(model, prefix="llm")
    calls = []
    with torch.inference_mode(), register_call_hook(calls.append):
        model(torch.randint(0, 101, (1, 9)))
    assert len(calls) == 1 and calls[0].is_causal and not calls[0].has_mask and calls[0].kernel == "flash"
