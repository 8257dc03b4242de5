"""FLOP counting: hand-derived counts, backend equality, phases, memoization/prediction, paper-scale SD UNet."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from genscope.cli import main
from genscope.instrument.flops import SOFTMAX_FLOPS_PER_ELEMENT, FlopCounter, count_callable
from genscope.models.layers.attention import AttentionSite, attention, use_backend
from genscope.studies.flops import count_workload

B, CIN, COUT, HW, K = 2, 3, 8, 8, 3  # conv input [B, CIN, HW, HW], kernel K x K, padding 1
D_MODEL, HEADS = 16, 2  # tokens: L = HW*HW = 64 of width COUT -> linear to D_MODEL -> 2 heads of 8
L = HW * HW
HEAD_DIM = D_MODEL // HEADS


class Toy(nn.Module):
    """conv -> tokens -> linear (q = k = v) -> attention through the entry point."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CIN, COUT, K, padding=1)
        self.proj = nn.Linear(COUT, D_MODEL)
        self.site = AttentionSite(path="toy.attn", kind="self")

    def forward(self, x):
        h = self.conv(x)  # [B, COUT, HW, HW]
        tokens = h.flatten(2).transpose(1, 2)  # [B, L, COUT]
        q = self.proj(tokens).view(B, L, HEADS, HEAD_DIM).transpose(1, 2)  # [B, H, L, d]
        return attention(q, q, q, site=self.site)


# hand-derived (FLOPs = 2 x MACs; biases are not multiply-accumulates)
CONV_FLOPS = 2 * B * COUT * HW * HW * CIN * K * K  # one MAC per output element per input channel per tap
LINEAR_FLOPS = 2 * (B * L) * COUT * D_MODEL
ATTENTION_FLOPS = 4 * B * HEADS * L * L * HEAD_DIM  # QK^T and PV
SOFTMAX_FLOPS = SOFTMAX_FLOPS_PER_ELEMENT * B * HEADS * L * L


def count_toy(device: str, backend: str) -> FlopCounter:
    model = Toy().to(device)
    x = torch.randn(B, CIN, HW, HW, device=device)
    with use_backend(backend):
        return count_callable(lambda: model(x), {"toy": model})


@pytest.mark.parametrize("device,backend", [("cpu", "flash"), ("cpu", "baseline"), ("meta", "flash"),
                                            ("meta", "baseline")])
def test_hand_derived_count(device, backend):
    counter = count_toy(device, backend)
    rows = counter.table()
    by_class = rows.groupby("op_class")["flops"].sum()
    assert by_class["Convolution"] == CONV_FLOPS == 55296
    assert by_class["Linear"] == LINEAR_FLOPS == 32768
    assert by_class["Attention"] == ATTENTION_FLOPS == 524288
    assert rows["softmax_flops"].sum() == SOFTMAX_FLOPS
    assert counter.get_total_flops() == CONV_FLOPS + LINEAR_FLOPS + ATTENTION_FLOPS
    assert (rows["macs"] * 2 == rows["flops"]).all()
    conv = rows[rows["op_class"] == "Convolution"]
    assert set(conv["module"]) == {"toy.conv"}


def test_baseline_and_flash_agree_on_real_cpu_tensors():
    flash, base = count_toy("cpu", "flash").table(), count_toy("cpu", "baseline").table()
    assert "aten::scaled_dot_product_attention" in set(flash["op"])  # the fused op torch counts 0 by itself
    assert "aten::bmm" in set(base["op"])  # the materialized path
    for col in ("flops", "softmax_flops"):
        assert flash.groupby("op_class")[col].sum().equals(base.groupby("op_class")[col].sum())
    # the fused op never writes the similarity matrix: fewer bytes
    assert flash["bytes"].sum() < base["bytes"].sum()


def test_whole_run_backends_agree_and_match_meta():
    flash = count_workload("stable-diffusion", "tiny", steps=1, device="cpu", attention="flash")
    base = count_workload("stable-diffusion", "tiny", steps=1, device="cpu", attention="baseline")
    meta = count_workload("stable-diffusion", "tiny", steps=1, device="meta")
    for key in ("flops", "attention_flops", "softmax_flops"):
        assert flash.summary[key] == base.summary[key] == meta.summary[key], key
    assert flash.summary["attention_flops"] > 0
    assert flash.tables["classes"].set_index("op_class")["flops"].equals(
        meta.tables["classes"].set_index("op_class")["flops"].reindex(flash.tables["classes"]["op_class"]))


def test_phases_sum_to_total_and_cfg_steps_are_in_the_count():
    result = count_workload("stable-diffusion", "tiny", steps=3)
    s = result.summary
    phases = result.tables["phases"]
    assert phases["flops"].sum() == s["flops"]
    denoise = phases.set_index("phase").loc["denoise"]
    assert denoise["entries"] == 3
    steps = result.tables["steps"]
    per_step = steps[steps["phase"] == "denoise"]["flops"]
    assert len(per_step) == 3 and per_step.nunique() == 1
    assert per_step.sum() == denoise["flops"]
    # classifier-free guidance doubles the UNet batch: without it, each step costs half
    no_cfg = count_workload("stable-diffusion", "tiny", steps=3, guidance_scale=1.0)
    assert no_cfg.tables["phases"].set_index("phase").loc["denoise", "flops"] * 2 == denoise["flops"]
    for name, df in result.tables.items():
        if {"flops", "macs"} <= set(df.columns):
            assert (df["flops"] == 2 * df["macs"]).all(), name
    two = count_workload("stable-diffusion", "tiny", steps=3, batch_size=2)
    assert two.summary["flops_per_image"] == pytest.approx(s["flops_per_image"])


@pytest.mark.parametrize("name,overrides", [("stable-diffusion", {"steps": 5}), ("llama", {"decode_tokens": 9}),
                                            ("parti", {}), ("imagen", {})])
def test_memoized_and_predicted_counts_are_exact(name, overrides):
    fast = count_workload(name, "tiny", **overrides)
    exact = count_workload(name, "tiny", memoize=False, **overrides)
    assert fast.summary["memoized_calls"] + fast.summary["predicted_calls"] > 0
    assert exact.summary["memoized_calls"] == exact.summary["predicted_calls"] == 0
    for table in ("phases", "classes", "modules", "ops", "steps"):
        pd.testing.assert_frame_equal(fast.tables[table], exact.tables[table])


@pytest.mark.parametrize("name", ["stable-diffusion", "imagen"])
def test_meta_op_cache_changes_nothing(name):
    """The meta op cache, the composite-op cache (``linear``, ``group_norm``, imagen's ``quantile``) and the
    scalar-tensor keys (the schedulers' alphas) leave every row, step total and meta read as they were."""
    from dataclasses import replace

    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    workload = registry.get(name)
    request = replace(workload.request(RunSettings(preset="tiny")), device=torch.device("meta"))
    results = []
    for cache in (True, False):
        pipeline = workload.build(workload.config("tiny"), device="meta")
        with FlopCounter(pipeline.components, meta_cache=cache) as counter:
            mode = counter.mode
            pipeline(request)
        results.append((counter.table().sort_values(["phase", "module", "op", "op_class"], ignore_index=True),
                        counter.step_table().sort_values(["phase", "step"], ignore_index=True),
                        counter.meta_value_reads, mode.composite_cache, mode.meta_cache))
    (rows, steps, reads, composites, metas), (rows0, steps0, reads0, composites0, metas0) = results
    pd.testing.assert_frame_equal(rows, rows0)
    pd.testing.assert_frame_equal(steps, steps0)
    assert reads == reads0
    assert composites and metas and not composites0 and not metas0  # the caches were used, and only when on
    assert "aten.linear.default" in {str(key[0]) for key in composites}


def test_sd15_unet_forward_at_paper_scale():
    """FIELD-NOTES: SD 1.5 UNet at 64x64 latent, batch 1, 77 tokens = 803.27 GFLOP (torch's own counter)."""
    from genscope.models.stable_diffusion import PAPER

    unet = PAPER.denoiser.build("meta")
    x = torch.empty(1, 4, 64, 64, device="meta")
    text = torch.empty(1, 77, 768, device="meta")
    counter = count_callable(lambda: unet(x, torch.tensor(999), encoder_hidden_states=text), {"denoiser": unet})
    assert round(counter.get_total_flops() / 1e9, 2) == 803.27
    rows = counter.table()
    assert rows["flops"].sum() == counter.get_total_flops()
    modules = rows.assign(top=rows["module"].str.split(".").str[:3].str.join("."))
    assert "denoiser.down_blocks.0" in set(modules["top"])  # depth deep enough to see the levels


def test_cli_flops_json(capsys):
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--json", "--no-store"]) == 0
    payload = json.loads(capsys.readouterr().out)
    s = payload["summary"]
    assert s["flops"] == 2 * s["macs"] > 0
    assert sum(p["flops"] for p in payload["phases"]) == s["flops"]
    assert {c["op_class"] for c in payload["classes"]} >= {"Convolution", "Linear", "Attention"}


def test_cli_flops_bad_input(capsys):
    assert main(["flops", "no-such-model", "--no-store"]) == 2
    assert "accepted" in capsys.readouterr().err
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--device", "tpu", "--no-store"]) == 2
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--steps", "0", "--no-store"]) == 2
