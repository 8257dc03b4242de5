"""Optimization passes (Chen et al. 2023): oracles, swap logs, Winograd correctness, the ablation on tiny."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from helpers import run_unet as run
from helpers import tiny_unet
from torch import nn

from genscope.cli import main
from genscope.errors import UserError
from genscope.models.layers.attention import (
    baseline_attention,
    flash_attention,
    use_backend,
)
from genscope.models.layers.partial_softmax import partial_softmax_attention, softmax_row_stats
from genscope.models.layers.triton_support import triton_available
from genscope.passes import PASS_NAMES, PassConfig, PassRefused, apply
from genscope.passes.base import CUDA_ONLY_PASSES
from genscope.passes.kernels import cpu as kcpu
from genscope.passes.kernels import winograd_math as wm
from genscope.passes.winograd import winograd_oracle


@pytest.fixture(autouse=True)
def _decision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCOPE_DECISIONS", str(tmp_path / "decisions.json"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from a second thread, and on a loaded 2-core machine every parallel region of a
    # tiny op can wait a scheduler quantum for the other thread (measured: a tiny UNet step 20-30 ms with one
    # thread, 350-650 ms with two): this module's tests run on one thread and restore the setting after
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def expected_paths(unet, name: str) -> set[str]:
    """The paths each pass must swap, derived from the model independently of the pass code."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    mods = dict(unet.named_modules())
    if name == "fused_geglu":
        return {p for p, m in mods.items() if type(m) is GEGLU}
    if name == "fused_groupnorm":
        blocks = {p for p, m in mods.items() if type(m) is ResnetBlock2D}
        return blocks | {f"{p}.norm1" for p in blocks} | {f"{p}.norm2" for p in blocks} | {"conv_norm_out", "conv_act"}
    if name in ("partial_softmax", "selective_flash"):
        return {f"{p}.processor" for p, m in mods.items() if isinstance(m, Attention)}
    if name == "winograd":
        return {p for p, m in mods.items() if type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)}
    if name == "channels_last":
        return {p for p, m in mods.items() if type(m) is nn.Conv2d}
    raise KeyError(name)


SWAP_CASES = {
    "partial_softmax": PassConfig(passes=("partial_softmax",)),
    "fused_groupnorm": PassConfig(passes=("fused_groupnorm",)),
    "fused_geglu": PassConfig(passes=("fused_geglu",)),
    "selective_flash": PassConfig(passes=("selective_flash",), measure=False),
    # F(2x2): the tile that meets the float32 oracle on every machine seen (F(4x4) passes on AVX2, not AVX-512)
    "winograd": PassConfig(passes=("winograd",), winograd_tile=2),
    "channels_last": PassConfig(passes=("channels_last",)),
}


@pytest.mark.parametrize("name", list(SWAP_CASES))
def test_pass_logs_exact_swaps_touches_nothing_else_and_meets_its_oracle(name):
    unet, args, kwargs = tiny_unet()
    with use_backend("baseline"):
        before = run(unet, args, kwargs)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    objects = dict(unet.named_modules())
    expected = expected_paths(unet, name)
    assert expected
    log = apply(unet, SWAP_CASES[name])
    assert log.paths == expected
    assert {s.pass_name for s in log} == {name}
    assert all(s.old_class != s.new_class and s.reason for s in log)
    # every oracle checked was met, and every pass checked at least one
    assert log.oracle and all(r.ok for r in log.oracle), [r.message() for r in log.oracle]
    # every module not swapped is the very same object; the state_dict is unchanged (keys and values)
    after = dict(unet.named_modules())
    for path, module in objects.items():
        if path not in log.paths:
            assert after[path] is module, path
    new_state = unet.state_dict()
    assert set(new_state) == set(state)
    assert all(torch.equal(new_state[k], state[k]) for k in state)
    with use_backend("baseline"):
        assert rel(run(unet, args, kwargs), before) < 1e-5
    log.undo()
    assert dict(unet.named_modules()) == objects


def test_all_passes_stack_undo_redo_and_bf16_weights():
    unet, args, kwargs = tiny_unet()
    with use_backend("baseline"):
        base = run(unet, args, kwargs)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    log = apply(unet, PassConfig(passes=tuple(n for n in PASS_NAMES if n not in ("bf16_weights", *CUDA_ONLY_PASSES)),
                                 measure=False,
                                 winograd_tile=2))
    fp32 = run(unet, args, kwargs)
    assert rel(fp32, base) < 1e-5
    low = apply(unet, PassConfig(passes=("bf16_weights",)))
    # Winograd F(2x2) with bf16 products fails in bf16 (noted); the layers keep float32 products, which pass
    assert low.oracle and all(r.ok for r in low.oracle if "bf16 weights" in r.what or "bfloat16 weights" in r.what)
    assert any(r.ok and "fp32-product" in r.what for r in low.oracle)
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    new_state = unet.state_dict()
    assert set(new_state) == set(state)
    assert all(torch.equal(new_state[k], state[k].to(torch.bfloat16)) for k in state if state[k].is_floating_point())
    assert 1e-4 < rel(run(unet, args, kwargs), base) < 0.05  # bf16 rounding, no more
    low.undo()
    assert torch.equal(run(unet, args, kwargs), fp32)
    log.undo()
    with use_backend("baseline"):
        assert torch.equal(run(unet, args, kwargs), base)
    log.redo()
    assert torch.equal(run(unet, args, kwargs), fp32)


@pytest.mark.parametrize("m", wm.TILES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 13, 11, (1, 1)), (1, 3, 4, 9, 17, (0, 0)), (1, 6, 6, 7, 5, (2, 1))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_equals_direct_convolution_on_odd_shapes(m, shape, channels_last):
    n, c, k, h, w, pad = shape
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(n, c, h, w, generator=gen)
    weight, bias = torch.randn(k, c, 3, 3, generator=gen), torch.randn(k, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=pad)
    y = kcpu.winograd_conv2d(x, kcpu.winograd_weight(weight, m), bias, m, padding=pad)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert rel(y, ref) < 2e-5  # float32 round-off only
    y64 = kcpu.winograd_conv2d(x.double(), kcpu.winograd_weight(weight.double(), m), bias.double(), m, padding=pad)
    assert rel(y64, ref) < 1e-12  # exact algebra
    fmt = torch.channels_last if channels_last and c > 1 else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


def test_winograd_transforms_are_exact_and_lavins():
    for m in (2, 3, 4, 5, 6, 7):
        mats = wm.toom_cook(m)
        n = m + 2
        for trial in range(3):
            d = [Fraction(((trial + 1) * 7 * i) % 11 - 5) for i in range(n)]
            g = [Fraction(3 - 2 * i + trial) for i in range(3)]
            gg = [sum(mats["G"][i][c] * g[c] for c in range(3)) for i in range(n)]
            bd = [sum(mats["BT"][i][j] * d[j] for j in range(n)) for i in range(n)]
            y = [sum(mats["AT"][o][i] * gg[i] * bd[i] for i in range(n)) for o in range(m)]
            assert y == [sum(d[o + c] * g[c] for c in range(3)) for o in range(m)]
    # with Lavin & Gray's points the construction gives their printed F(4x4, 3x3) matrices
    lavin_points = tuple(Fraction(p) for p in (0, 1, -1, 2, -2))
    assert wm.toom_cook(4, points=lavin_points) == wm._as_fractions(wm.LAVIN_F4)
    assert wm.transform_fractions(4, "lavin") == tuple_mats(wm._as_fractions(wm.LAVIN_F4))
    # Table 2 of the paper, analytically
    assert [round(wm.flops_saving(m), 2) for m in (2, 4, 6, 8)] == [2.25, 4.0, 5.06, 5.76]
    assert [round(wm.tensor_multiplier(m), 2) for m in (2, 4, 6, 8)] == [4.0, 2.25, 1.78, 1.56]
    assert [round(wm.weight_multiplier(m), 2) for m in (2, 4, 6, 8)] == [1.78, 4.0, 7.11, 11.11]


def tuple_mats(mats):
    return {k: tuple(tuple(r) for r in v) for k, v in mats.items()}


def test_oracle_refuses_a_failing_combination_with_the_measured_error():
    unet, _, _ = tiny_unet()
    before = {p: m for p, m in unet.named_modules()}
    with pytest.raises(PassRefused) as info:
        apply(unet, PassConfig(passes=("winograd",), winograd_tile=6))  # F(6x6) in float32: ~6x direct's error
    assert "relative error" in str(info.value) and "refused" in str(info.value)
    assert not info.value.result.ok and info.value.result.error > 2 * info.value.result.baseline_error
    assert dict(unet.named_modules()) == before  # nothing swapped
    # bf16 with bf16 products is refused for every tile; the pass says so and falls back to float32 products
    low = apply(unet, PassConfig(passes=("bf16_weights",)))
    log = apply(unet, PassConfig(passes=("winograd",), winograd_tile=4))
    assert any("F(4x4,3x3) refused in bfloat16" in n and "relative error" in n for n in log.notes)
    assert {s.new.fixed.product for s in log} == {"float32"}
    log.undo()
    low.undo()


def test_a_pass_that_does_not_apply_says_so_and_changes_nothing():
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(4, 4, 1), nn.SiLU())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, words in (("winograd", "no 3x3"), ("fused_groupnorm", "no GroupNorm"), ("fused_geglu", "no diffusers GEGLU"),
                        ("partial_softmax", "no diffusers attention")):
        log = apply(model, PassConfig(passes=(name,)))
        assert len(log) == 0
        assert any(words in n for n in log.notes), log.notes
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [type(m) for m in model] == [nn.Linear, nn.Conv2d, nn.SiLU]


def test_filter_fn_restricts_the_swaps():
    unet, _, _ = tiny_unet()
    log = apply(unet, PassConfig(passes=("winograd",), winograd_tile=2), filter_fn=lambda p, m: p.startswith("up_blocks"))
    assert log and all(s.path.startswith("up_blocks") for s in log)


def test_unknown_pass_and_triton_without_gpu_are_user_errors(capsys):
    unet, _, _ = tiny_unet()
    with pytest.raises(UserError, match="unknown pass"):
        apply(unet, PassConfig(passes=("nope",)))
    if not triton_available("cpu"):
        with pytest.raises(UserError, match="triton"):
            apply(unet, PassConfig(passes=("fused_geglu",), backend="triton"))
        assert main(["optimize", "stable-diffusion", "--preset", "tiny", "--ablation", "--backend", "triton",
                     "--no-store"]) == 2
    assert main(["optimize", "stable-diffusion", "--preset", "tiny"]) == 2  # neither table asked for
    assert main(["optimize", "stable-diffusion", "--preset", "huge", "--ablation"]) == 2
    assert main(["optimize", "imagen", "--ablation"]) == 2
    capsys.readouterr()
    assert main(["optimize", "foo"]) == 2  # the unknown model is named first, whatever else is missing
    err = capsys.readouterr().err.strip()
    assert "'foo'" in err and "stable-diffusion" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_partial_softmax_matches_baseline_with_masks_and_blocks(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen).to(dtype) for n in (37, 29, 29))
    mask = torch.rand(2, 1, 37, 29, generator=gen) > 0.3
    mask[..., 0] = True
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for kwargs in ({}, {"attn_mask": mask}, {"is_causal": True}, {"attn_mask": mask, "scale": 0.3}):
        ref = baseline_attention(q.double(), k.double(), v.double(), **{**kwargs, "attn_mask": kwargs.get("attn_mask")})
        for rows in (None, 5, 1000):
            out = partial_softmax_attention(q, k, v, block_rows=rows, **kwargs)
            assert out.dtype == dtype and rel(out, ref) < tol, (kwargs, rows)
        with use_backend("partial_softmax"):
            from genscope.models.layers.attention import attention

            assert rel(attention(q, k, v, **kwargs), ref) < tol
    stats = softmax_row_stats(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(stats, torch.tensor([[3.0, 1 + torch.e**-1 + torch.e**-2]]))


def test_partial_softmax_needs_less_memory_than_baseline():
    from genscope.instrument.memory import track_peak_memory

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1024, 16, generator=gen) for _ in range(3))
    peaks = {}
    partial = lambda q, k, v: partial_softmax_attention(q, k, v, block_rows=64)  # noqa: E731
    for name, fn in (("baseline", baseline_attention), ("partial", partial), ("flash", flash_attention)):
        with torch.inference_mode(), track_peak_memory() as stats:
            fn(q, k, v)
        peaks[name] = stats.peak_bytes
    matrix = 4 * 1024 * 1024 * 4  # one [B*H, N, M] float32 similarity matrix
    assert peaks["baseline"] >= 2 * matrix  # scores and probabilities
    assert peaks["partial"] < matrix / 4  # blocks of 64 rows only


def test_selective_flash_decides_per_shape_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCOPE_DECISIONS", str(tmp_path / "d.json"))
    unet, args, kwargs = tiny_unet()
    log = apply(unet, PassConfig(passes=("selective_flash",), example_inputs=args, example_kwargs=kwargs, repeats=1))
    rows = log.decisions
    assert rows and {r["choice"] for r in rows} <= {"flash", "partial_softmax"}
    assert {r["rule"] for r in rows} == {"measured"}
    assert (tmp_path / "d.json").is_file()
    log.undo()
    again = apply(unet, PassConfig(passes=("selective_flash",), example_inputs=args, example_kwargs=kwargs))
    assert {r["rule"] for r in again.decisions} == {"measured (cached)"}
    assert [r["choice"] for r in again.decisions] == [r["choice"] for r in rows]
    again.undo()
    rule = apply(unet, PassConfig(passes=("selective_flash",), measure=False, flash_head_dims=(16,),
                                  example_inputs=args, example_kwargs=kwargs))
    assert {(r["shape"]["d"], r["choice"]) for r in rule.decisions} == {(16, "flash"), (32, "partial_softmax")}


def test_measured_winograd_keeps_only_layers_where_it_wins():
    unet, args, kwargs = tiny_unet()
    log = apply(unet, PassConfig(passes=("winograd",), example_inputs=args, example_kwargs=kwargs, repeats=1))
    decided = {(r["c"], r["h"], r["k"]): r["choice"] for r in log.decisions}
    assert decided  # every layer shape was measured
    for swap in log:
        assert swap.new.variants_used()  # swapped layers use Winograd for their shape
    refused = {r.what for r in log.oracle if not r.ok}
    assert "winograd F(6x6,3x3)" in refused  # float32: ~6.5x (AVX2) to 18x (AVX-512) direct's error
    # every tile failing the canonical oracle on this machine is refused (a layer's own weights may refuse
    # more), and no swapped layer uses one
    canonical = {m: winograd_oracle(m, torch.float32) for m in (2, 4, 6)}
    assert {canonical[m].what for m in canonical if not canonical[m].ok} <= refused
    used = {v.m for swap in log for v in swap.new.variants_used()}
    assert all(canonical[m].ok for m in used)  # may be empty: direct convolution measured faster everywhere


def test_fused_kernels_meet_the_oracle_in_16_bit():
    from genscope.passes.oracle import check_functions

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(2, 32, 6, 6, generator=gen).to(dtype)
        w, b = torch.randn(32, generator=gen).to(dtype), torch.randn(32, generator=gen).to(dtype)
        r = check_functions("t", "gn", lambda x, w, b: kcpu.group_norm_silu(x, 8, w, b, 1e-5),
                            lambda x, w, b: kcpu.group_norm_silu_reference(x, 8, w, b, 1e-5),
                            lambda x, w, b: kcpu.group_norm_silu_reference(x, 8, w, b, 1e-5), (x, w, b), dtype)
        assert r.ok, r.message()
        h = torch.randn(2, 5, 16, generator=gen).to(dtype)
        wg, bg = torch.randn(24, 16, generator=gen).to(dtype) / 4, torch.randn(24, generator=gen).to(dtype)
        r = check_functions("t", "geglu", kcpu.geglu, kcpu.geglu_reference, kcpu.geglu_reference, (h, wg, bg), dtype)
        assert r.ok, r.message()


def test_ablation_runs_end_to_end_on_tiny(tmp_path):
    from genscope.studies.optimization import ROWS, run_ablation
    from genscope.studies.winograd_table import winograd_table

    tables = run_ablation(preset="tiny", repeats=1, profile=False, measure=False)
    ab = tables["ablation"]
    assert list(ab["row"]) == [r.label for r in ROWS]
    assert ab["max_rel_error"].iloc[0] == 0.0
    assert (ab["max_rel_error"].iloc[1:5] < 1e-4).all()  # float32 rows: round-off only
    # bf16 weights and activations (8-bit significands) through the tiny UNet: a few % of rounding (5.1 % on an
    # AVX-512 Xeon, less on AVX2), no more - a wrong weight or layout would be O(1)
    assert 1e-4 < ab["rel_error"].iloc[5] < 0.1
    assert list(ab["dtype"]) == ["float32"] * 5 + ["bfloat16"] * (len(ROWS) - 5)  # bf16 and every row after it
    # Winograd everywhere (measure=False: the paper's F(4x4), or F(2x2) where F(4x4) fails the float32 oracle on
    # this machine) keeps U = (m+2)^2/9 x the 3x3 weights; bf16 halves the model's own weights
    # (U stays float32: bf16 products fail the oracle)
    m = 4 if winograd_oracle(4, torch.float32).ok else 2
    assert set(tables["swaps"].loc[tables["swaps"]["row"] == "+ Winograd", "reason"]) == {f"F({m}x{m},3x3) everywhere"}
    unet, _, _ = tiny_unet()
    conv3x3_mb = sum(mod.weight.numel() * 4 for mod in unet.modules() if type(mod) is nn.Conv2d
                     and mod.kernel_size == (3, 3) and mod.stride == (1, 1)) / 2**20
    assert ab["weight_mb"].iloc[4] - ab["weight_mb"].iloc[3] == pytest.approx((m + 2) ** 2 / 9 * conv3x3_mb, rel=1e-6)
    assert ab["weight_mb"].iloc[4] - ab["weight_mb"].iloc[5] == pytest.approx(ab["weight_mb"].iloc[0] / 2, rel=0.01)
    assert (ab["peak_tensor_mb"] > 0).all() and ab["peak_tensor_mb"].iloc[2] < ab["peak_tensor_mb"].iloc[0]
    assert (ab["time_ms"] > 0).all() and (ab["step_flops"] > 0).all()
    assert set(tables["swaps"]["row"]) == {r.label for r in ROWS[1:]}
    oracle = tables["oracle"]
    # only refused Winograd variants fail: F(m) with bf16 products (noted), and in float32 the tiles above m
    failed = oracle.loc[~oracle["ok"]]
    assert {f"winograd F({m}x{m},3x3)"} <= set(failed.loc[failed["dtype"] == "bfloat16", "what"])
    assert set(failed.loc[failed["dtype"] == "float32", "what"]) == ({"winograd F(4x4,3x3)"} if m == 2 else set())
    assert set(failed["dtype"]) <= {"bfloat16", "float32"}
    table2 = winograd_table(preset="tiny", repeats=1, dtypes=("float32",))
    w = table2["winograd"].set_index("m")
    assert w.loc[4, "measured_weight_multiplier"] == pytest.approx(4.0)
    assert w.loc[6, "measured_weight_multiplier"] == pytest.approx(64 / 9)
    assert not w.loc[8, "implemented"]
    err = table2["winograd_error"].set_index("variant")
    assert bool(err.loc["F(2x2,3x3)", "oracle_ok"]) and not bool(err.loc["F(6x6,3x3)", "oracle_ok"])


def test_cli_ablation_stores_and_reports(tmp_path, capsys):
    db = tmp_path / "r.db"
    assert main(["optimize", "stable-diffusion", "--preset", "tiny", "--ablation", "--rows", "softmax,fused",
                 "--repeat", "1", "--no-profile", "--no-measure", "--db", str(db), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in out["tables"]["ablation"]] == ["baseline", "+ partially fused softmax",
                                                             "+ fused GroupNorm/GELU"]
    from genscope.report.html import render
    from genscope.results.store import ResultsStore

    page = render(ResultsStore(db))
    page = page.replace("<wbr>", "")  # the report lets long cells break after '/' and inside CamelCase
    assert "Table 1: one UNet step" in page and "+ fused GroupNorm/GELU" in page


@pytest.mark.gpu
def test_triton_kernels_match_the_cpu_ones():
    # on CPU the same kernels run under TRITON_INTERPRET=1 in tests/test_triton_interpret.py (the variable must
    # be set before triton is imported, so there they run in a subprocess)
    device = "cuda"
    assert triton_available(device), "triton is not installed"
    from genscope.models.layers import partial_softmax_triton as pst
    from genscope.passes.kernels import triton_kernels as tk

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5, 7, generator=gen).to(device)
    w, b = torch.randn(16, generator=gen).to(device), torch.randn(16, generator=gen).to(device)
    assert rel(tk.group_norm_silu_triton(x, 4, w, b, 1e-5, block=64), kcpu.group_norm_silu_reference(x, 4, w, b, 1e-5)) < 1e-5
    h = torch.randn(3, 16, generator=gen).to(device)
    wg, bg = torch.randn(40, 16, generator=gen).to(device), torch.randn(40, generator=gen).to(device)
    assert rel(tk.geglu_triton(h, wg, bg, block=64), kcpu.geglu_reference(h, wg, bg)) < 1e-5
    xc, wc = torch.randn(1, 3, 9, 11, generator=gen).to(device), torch.randn(4, 3, 3, 3, generator=gen).to(device)
    for m in wm.TILES:
        y = tk.winograd_conv2d_triton(xc, kcpu.winograd_weight(wc, m), None, m, block_t=16)
        assert rel(y, F.conv2d(xc, wc, padding=1)) < 1e-4
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen).to(device) for n in (33, 20, 20))
    out = pst.partial_softmax_attention_triton(q, k, v, mask=None, scale=0.25)
    assert rel(out, baseline_attention(q, k, v, scale=0.25)) < 1e-4


def test_winograd_weight_budget_limits_transformed_weights():
    from genscope.passes.decisions import DecisionCache, decision_key
    from genscope.passes.winograd import Variant, WinogradConv2d, decision_shape, is_winograd_candidate

    unet, args, kwargs = tiny_unet()
    shapes = {}

    def record(path):
        def pre(module, inputs):
            shapes.setdefault(path, tuple(inputs[0].shape))
        return pre

    hooks = [m.register_forward_pre_hook(record(p)) for p, m in unet.named_modules() if is_winograd_candidate(m)]
    run(unet, args, kwargs)
    for h in hooks:
        h.remove()
    # the candidates: the tiles among F(2x2), F(4x4) that meet the float32 oracle on this machine (both on
    # AVX2; F(2x2) only on AVX-512); pretend the largest was measured fastest everywhere
    allowed = [Variant(m) for m in (2, 4) if winograd_oracle(m, torch.float32).ok]
    best = allowed[-1]
    cache = DecisionCache()
    for path, (n, c, h, w) in shapes.items():
        shape = decision_shape(unet.get_submodule(path), torch.empty(n, c, h, w), allowed)
        cache.put(decision_key("winograd", "cpu", torch.float32, shape),
                  {"choice": best.name, "direct_ms": 10.0, **{f"{v.name}_ms": 6.0 - v.m / 4 for v in allowed}})
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())

    def u_bytes():
        return sum(b.numel() * b.element_size() for m in unet.modules() if isinstance(m, WinogradConv2d)
                   for name, b in m.named_buffers(recurse=False) if name.startswith("winograd_u"))

    cfg = {"passes": ("winograd",), "winograd_tiles": (2, 4), "example_inputs": args, "example_kwargs": kwargs}
    full = apply(unet, PassConfig(**cfg))
    # with F(4x4), conv_in (4 input channels) fails the oracle on its own weights (direct convolution's error
    # over a 36-term sum is tiny, F(4x4)'s is not) and stays direct; conv_out (4 outputs) is borderline
    own = {(r["c"], r["k"]) for r in full.decisions if "own oracle failed" in r["rule"]}
    assert own <= {(4, 32), (32, 4)} and ((4, 32) in own) == (best.m == 4)
    edge = {"conv_in": (4, 32), "conv_out": (32, 4)}
    assert full.paths == set(shapes) - {p for p, ck in edge.items() if ck in own}
    assert {r["rule"].split(";")[0] for r in full.decisions} == {"measured (cached)"}
    assert u_bytes() == pytest.approx((best.m + 2) ** 2 / 9 * sum(unet.get_submodule(p).weight.numel() * 4
                                                                  for p in full.paths))
    full.undo()
    limited = apply(unet, PassConfig(**cfg, winograd_weight_budget=0.5))
    assert 0 < len(limited) < len(full)
    assert 0 < u_bytes() <= 0.5 * weights
    assert any("weight budget" in n for n in limited.notes)
    limited.undo()
    assert len(apply(unet, PassConfig(**cfg, winograd_weight_budget=0.0))) == 0
