"""Sequence-length tracer and studies (Figures 8, 9), image scaling (Figure 10) and prefill/decode (Table III)."""

import json

import pandas as pd
import pytest
import torch

from genscope.cli import main
from genscope.errors import UserError
from genscope.instrument.seqlen import (
    COLUMNS,
    fundamental_period,
    replicate_steps,
    trace_workload,
)
from genscope.workloads import registry

SD_TINY = registry.get("stable-diffusion").config("tiny")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from 2 threads; on a busy machine the 2nd thread's spin-waits cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tracer_records_every_sd_call_with_phase_shapes_and_matrix_bytes():
    trace = trace_workload("stable-diffusion", preset="tiny", device="cpu", steps=1)
    calls = trace.calls
    assert list(calls.columns) == list(COLUMNS)
    assert calls["call"].tolist() == list(range(len(calls)))
    assert set(calls["phase"]) == {"text_encoder", "denoise", "decoder"}
    denoise = calls[calls["phase"] == "denoise"]
    assert set(denoise["step"]) == {0} and set(denoise["component"]) == {"denoiser"}
    assert set(denoise["kind"]) == {"self", "cross"}
    assert (denoise["batch"] == 2).all()  # classifier-free guidance: [uncond; cond]
    assert (denoise.loc[denoise["kind"] == "cross", "key_len"] == SD_TINY.text_len).all()
    assert (calls.loc[calls["phase"] == "text_encoder", "kind"] == "causal").all()
    assert calls.loc[calls["phase"] != "denoise", "step"].isna().all()
    assert (calls["similarity_bytes"] == calls["batch"] * calls["heads"] * calls["query_len"] * calls["key_len"]
            * 4).all()  # float32
    assert (calls["flops"] == 2 * calls["macs"]).all()


def test_sd_tiny_period_is_u_shaped():
    """Figure 8: one denoising step starts and ends at the first level's length, smallest in the middle."""
    trace = trace_workload("stable-diffusion", preset="tiny", device="cpu", steps=2)
    period = trace.period()
    lengths = period["seq_len"].tolist()
    first_level = (SD_TINY.image_size // 8) ** 2  # 64 px / VAE 8 -> 8 x 8 latent tokens
    assert len(period) == len(trace.calls[(trace.calls["phase"] == "denoise") & (trace.calls["step"] == 0)])
    assert lengths[0] == lengths[-1] == first_level == max(lengths)
    bottom = lengths.index(min(lengths))
    assert 0 < bottom < len(lengths) - 1
    assert all(a >= b for a, b in zip(lengths[:bottom], lengths[1:bottom + 1], strict=True))  # down the U
    assert all(a <= b for a, b in zip(lengths[bottom:-1], lengths[bottom + 1:], strict=True))  # and up
    assert min(lengths) == (SD_TINY.image_size // 8 // 8) ** 2  # the mid block, 3 downsamplings deeper


def test_meta_trace_replicates_steps_exactly():
    """Shape-only trace (2 steps run, the rest replicated) equals a real run of every step."""
    meta = trace_workload("stable-diffusion", preset="tiny", device="meta", steps=3)
    real = trace_workload("stable-diffusion", preset="tiny", device="cpu", steps=3)
    assert meta.replicated == [{"phase": "denoise", "steps": 3, "steps_run": 2, "calls_per_step": 20}]
    # the kernel column says what ran: nothing on meta, SDPA's fused kernel on the CPU
    assert (meta.calls["kernel"] == "meta").all() and (real.calls["kernel"] == "flash").all()
    pd.testing.assert_frame_equal(meta.calls.drop(columns="kernel"), real.calls.drop(columns="kernel"))


def test_replication_refuses_steps_that_differ():
    def row(step, q):
        return {"phase": "decode", "step": step, "path": "p", "kind": "causal", "batch": 1, "heads": 1,
                "query_len": q, "key_len": 4 + step, "context_len": 0, "head_dim": 8, "dtype": "float32"}

    with pytest.raises(RuntimeError, match="differ"):
        replicate_steps([row(0, 1), row(1, 1)], [("decode", 5, 2, 0, 2)])
    rows, notes = replicate_steps([{**row(0, 1), "key_len": 4}, {**row(1, 1), "key_len": 4}],
                                  [("decode", 4, 2, 0, 2)])
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and notes[0]["steps_run"] == 2


@pytest.mark.parametrize("model", ["llama", "parti"])
def test_meta_trace_extrapolates_decode_steps_exactly(model):
    """Three decode steps run and the rest extrapolated equal every step run (tiny: parti's 16 image tokens)."""
    tokens = {"decode_tokens": 9} if model == "llama" else {}
    fast = trace_workload(model, preset="tiny", device="meta", **tokens)
    full = trace_workload(model, preset="tiny", device="meta", all_steps=True, **tokens)
    grown = [n for n in fast.replicated if n.get("extrapolated")]
    assert grown and grown[0]["steps_run"] == 3 and grown[0]["steps"] >= 8
    pd.testing.assert_frame_equal(fast.calls, full.calls)


def test_extrapolation_refuses_steps_that_do_not_grow_on_a_line():
    def row(step, key_len):
        return {"phase": "decode", "step": step, "path": "p", "kind": "causal", "batch": 1, "heads": 1,
                "query_len": 1, "key_len": key_len, "context_len": 0, "head_dim": 8, "dtype": "float32"}

    rows, notes = replicate_steps([row(0, 4), row(1, 5), row(2, 6)], [("decode", 5, 3, 0, 3)])
    assert [r["key_len"] for r in rows] == [4, 5, 6, 7, 8] and notes[0]["extrapolated"]
    with pytest.raises(RuntimeError, match="linearly"):
        replicate_steps([row(0, 4), row(1, 5), row(2, 7)], [("decode", 5, 3, 0, 3)])


def test_autoregressive_decode_has_query_length_1_and_growing_context():
    calls = trace_workload("llama", preset="tiny", device="cpu", decode_tokens=3).calls
    decode = calls[calls["phase"] == "decode"]
    assert len(decode) and (decode["query_len"] == 1).all() and (decode["kind"] == "causal").all()
    prefill_len = int(calls.loc[calls["phase"] == "prefill", "query_len"].iloc[0])
    for step, group in decode.groupby("step"):
        assert (group["key_len"] == prefill_len + 1 + step).all() or (group["key_len"] == prefill_len + step).all()
        assert (group["seq_len"] == group["key_len"]).all()  # causal: the tokens in context
    period = fundamental_period(calls)  # AR: the whole decode loop (steps differ)
    assert len(period) == len(decode) and period["seq_len"].is_monotonic_increasing


def test_study_distribution_and_ratios():
    from genscope.studies.seqlen import sequence_lengths

    result = sequence_lengths("stable-diffusion", preset="tiny", image_sizes=[64, 128], device="cpu", steps=1)
    summary = result.summary.set_index("image_size")
    assert summary.loc[64, "seq_len_max"] == 64 and summary.loc[128, "seq_len_max"] == 256
    assert summary.loc[64, "max_over_min"] == 64  # 8x8 latent down to the 1x1 mid block
    assert summary.loc[64, "largest_consecutive_ratio"] == 4  # one level: x4 tokens (d^2 with d = 2)
    dist = result.distribution
    for size, group in dist.groupby("image_size"):
        assert group["calls"].sum() == summary.loc[size, "calls_total"]
        assert group["fraction"].sum() == pytest.approx(1.0)
    # the distribution shifts right as the image grows
    mean = dist.assign(w=dist.seq_len * dist.calls).groupby("image_size").w.sum() / dist.groupby(
        "image_size").calls.sum()
    assert mean[128] > mean[64]


def test_cli_seqlen_json_and_bad_input(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    assert main(["seqlen", "stable-diffusion", "--preset", "tiny", "--device", "cpu", "--steps", "1", "--json",
                 "--db", db]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"period", "distribution", "summary"} and out["summary"][0]["image_size"] == 64
    assert main(["seqlen", "stable-diffusion", "--preset", "tiny", "--image-size", "100", "--no-store"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "image size 100" in err
    assert main(["seqlen", "llama", "--preset", "tiny", "--image-size", "64", "--no-store"]) == 2
    assert "no image size" in capsys.readouterr().err
    assert main(["scaling", "--device", "meta", "--no-store"]) == 2
    assert "meta" in capsys.readouterr().err
    assert main(["prefill-decode", "--device", "meta", "--sweep-only", "--no-store"]) == 2
    assert main(["scaling", "--image-size", "96", "--no-store"]) == 2


# ----------------------------------------------------------------------------------------------------
# Figure 10 and Table III: structure and arithmetic (no timing assertions)
# ----------------------------------------------------------------------------------------------------
def test_crossover_and_slopes_from_known_power_laws():
    from genscope.studies.image_scaling import crossovers, slopes

    sizes = [64, 128, 256, 512]
    rows = []
    for s in sizes:
        rows.append({"image_size": s, "backend": "flash", "op_class": "Convolution", "time_ms": (s / 128) ** 2})
        rows.append({"image_size": s, "backend": "flash", "op_class": "Attention", "time_ms": (s / 128) ** 1})
    times = pd.DataFrame(rows)
    sl = slopes(times).set_index("op_class")
    assert sl.loc["Convolution", "slope"] == pytest.approx(2.0) and sl.loc["Attention", "slope"] == pytest.approx(1.0)
    cross = crossovers(times)
    measured = cross[cross["kind"] == "measured"].iloc[0]
    fitted = cross[cross["kind"] == "fitted"].iloc[0]
    assert measured["image_size"] == pytest.approx(128, rel=1e-3) and fitted["image_size"] == pytest.approx(128, 1e-3)
    assert measured["direction"] == "convolution overtakes attention"
    # nearly parallel lines far apart (noisy timings) cross at an absurd size: no fitted crossover, no overflow
    far = pd.DataFrame([{"image_size": s, "backend": "flash", "op_class": c, "time_ms": k * (s / 128) ** p}
                        for s in (64, 128) for c, k, p in (("Convolution", 1e-300, 1.0), ("Attention", 1.0, 1.0 - 1e-6))])
    assert crossovers(far).query("kind == 'fitted'").empty


def test_image_scaling_runs_on_tiny():
    from genscope.studies.image_scaling import image_scaling

    result = image_scaling(preset="tiny", image_sizes=[64, 128], steps=1, repeat=1)
    times = result.times
    assert set(times["backend"]) == {"baseline", "flash"} and set(times["image_size"]) == {64, 128}
    conv = times[times["op_class"] == "Convolution"]
    attn = times[times["op_class"] == "Attention"]
    assert (conv["time_ms"] > 0).all() and (attn["time_ms"] > 0).all()
    assert len(result.slopes) == 4
    skipped = image_scaling(preset="tiny", image_sizes=[64], steps=1, repeat=1, memory_fraction=1e-12)
    assert set(skipped.times["backend"]) == {"flash"}  # baseline would not fit: flash alone is measured
    assert skipped.skipped[["image_size", "backend"]].values.tolist() == [[64, "baseline"]]


def test_query_length_sweep_and_workload_shapes():
    from genscope.studies.prefill_decode import (
        DECODE,
        PREFILL,
        fill_untimed,
        query_length_sweep,
        select_shapes,
        time_shapes,
        workload_shapes,
        workload_summary,
    )

    sweep = query_length_sweep(key_len=64, heads=2, head_dim=16, repeat=1)
    assert sweep["query_len"].tolist() == [1, 2, 4, 8, 16, 32, 64]
    assert sweep["regime"].iloc[0] == DECODE and set(sweep["regime"].iloc[1:]) == {PREFILL}
    assert (sweep["baseline_ms"] > 0).all() and (sweep["flash_ms"] > 0).all() and sweep["timed"].all()
    with pytest.raises(UserError):
        query_length_sweep(key_len=64, query_lens=[128])
    # 128 px: the tiny UNet's mid block is 2 x 2 tokens (at 64 px it is 1 x 1: a query of length 1)
    shapes, skipped = workload_shapes(["stable-diffusion"], preset="tiny", device="cpu", image_size=128)
    assert skipped.empty and set(shapes["regime"]) == {PREFILL}  # diffusion: every call "prefill-like"
    assert shapes["calls"].sum() == len(trace_workload("stable-diffusion", preset="tiny", device="cpu",
                                                       image_size=128).calls)
    chosen = select_shapes(shapes, max_per_workload=3)
    assert len(chosen) == 3
    timed = time_shapes(chosen, repeat=1)
    full = fill_untimed(shapes, timed)
    assert len(full) == len(shapes) and full["timed"].sum() == 3
    summary = workload_summary(full)
    assert summary.loc[0, "calls"] == shapes["calls"].sum() and summary.loc[0, "decode_call_share"] == 0.0
    # a shape too large for the memory budget is listed, not timed
    big = time_shapes(chosen.head(1), repeat=1, memory_fraction=1e-15)
    assert not big["timed"].any() and big["baseline_ms"].isna().all()
