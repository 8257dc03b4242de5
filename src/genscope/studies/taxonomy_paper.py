"""Table I as the paper defines it: its rows, its units, the paper's value next to genscope's derived one.

Golden et al., ``papers/genai-beyond-llms-v2.txt``, "TABLE I: Taxonomy of Text-to-Image Models" (columns
Imagen, Stable Diffusion, Muse, Parti). :data:`PAPER_TABLE_I` is typed from it; :func:`align` turns the
``taxonomy`` table of :mod:`genscope.studies.taxonomy` (derived from the ``paper`` presets on the meta device)
into one row per (Table I row, model): ``row, workload, paper, genscope, agrees, why`` - ``agrees`` is
True / False, or None where one side has no value ("not in paper", "not measured"); ``why`` is a one-line
reason wherever they differ (which open model stands in, and how it differs).

Units as the paper uses them, per model: Imagen's "Attn Res" are feature-map sizes ([32, 16, 8] at 64 px),
Stable Diffusion's are downsampling factors ([4, 2, 1]); "Num Params" counts the networks the paper counts
(:data:`NETWORK_COMPONENTS`), shown next to the whole pipeline's count.
"""

from __future__ import annotations

import math

import pandas as pd

NOT_IN_PAPER = "not in paper"
PARAMS_TOLERANCE = 0.15  # a parameter count agrees within 15%

# Typed from Table I (blank cells omitted; "Per-Head Channels" of Parti is "_" in the paper).
PAPER_TABLE_I: dict[str, dict[str, object]] = {
    "imagen": {"Architecture": "Diffusion (Pixel)", "Num Params": 3e9, "Attn Res": [32, 16, 8],
               "Text Cross Attn Res": [32, 16, 8], "Channel Mult": [1, 2, 4, 4], "Num Res Blocks": 3,
               "Per-Head Channels": 64, "Embed Dim": 512, "Compute": "High", "Memory": "Medium", "Latency": "High"},
    "stable-diffusion": {"Architecture": "Diffusion (Latent)", "Num Params": 1.45e9, "Attn Res": [4, 2, 1],
                         "Channel Mult": [1, 2, 4, 4], "Num Res Blocks": 2, "Per-Head Channels": 8,
                         "Embed Dim": 768, "Compute": "Medium", "Memory": "Low", "Latency": "Medium"},
    "muse": {"Architecture": "Transformer", "Num Params": 3e9, "Num Layers": 48, "Model Dim": 2048,
             "Compute": "Low", "Memory": "Low", "Latency": "Low"},
    "parti": {"Architecture": "Transformer", "Num Params": 20e9, "Num Layers": 80, "Model Dim": 4096,
              "Compute": "Low", "Memory": "High", "Latency": "Medium"},
}
ROWS = ("Architecture", "Num Params", "Num Layers", "Model Dim", "Attn Res", "Text Cross Attn Res", "Channel Mult",
        "Num Res Blocks", "Per-Head Channels", "Embed Dim", "Compute", "Memory", "Latency")

# The networks each paper count covers (components of genscope's pipeline):
# * Imagen: the three cascade UNets, 2B + 600M + 400M = 3B (Saharia et al. 2022, Sec. 4.1), T5-XXL not counted;
# * Parti-20B: encoder + decoder transformer, ViT-VQGAN not counted (Yu et al. 2022, Table 1);
# * Muse-3B: the base transformer (Chang et al. 2023); Stable Diffusion: the UNet.
NETWORK_COMPONENTS: dict[str, tuple[str, ...]] = {
    "imagen": ("denoiser", "sr_256", "sr_1024"), "stable-diffusion": ("denoiser",), "muse": ("transformer",),
    "parti": ("text_encoder", "decoder"),
}
# Models whose "Num Layers" is encoder + decoder (Parti-20B: 16 + 64, Yu et al. 2022, Table 1).
ENCODER_DECODER_LAYERS: dict[str, tuple[str, ...]] = {"parti": ("text_encoder", "decoder")}
# Which derived column carries the paper's "Attn Res" unit per model (see the module docstring).
ATTN_RES_COLUMN = {"imagen": "attn_resolutions", "stable-diffusion": "attn_downsample_factors"}
CROSS_RES_COLUMN = {"imagen": "cross_attn_resolutions", "stable-diffusion": "cross_attn_downsample_factors"}

# One-line reasons where genscope's open stand-in differs from the paper's value (row, workload) -> why.
WHY: dict[tuple[str, str], str] = {
    ("Num Params", "imagen"): "DeepFloyd IF stands in for Imagen: its cascade IF-I-XL + IF-II-L + x4 upscaler "
                              "is about 6B, Imagen's 2B + 600M + 400M is 3B (Saharia et al. 2022)",
    ("Channel Mult", "imagen"): "IF-I-XL's block channels are 704 x [1, 2, 3, 4] (DeepFloyd IF config); the paper "
                                "lists [1, 2, 4, 4]",
    ("Embed Dim", "imagen"): "IF-I-XL conditions on T5-XXL (4096 wide) and its base width is 704; the paper's 512 "
                             "matches neither",
    ("Num Params", "stable-diffusion"): "SD 1.5 stands in (UNet 0.86B, pipeline 1.03B); the paper profiled an "
                                        "SD-architecture model retrained on licensed data (Sec. III), 1.45B",
    ("Per-Head Channels", "stable-diffusion"): "SD 1.5 has 8 heads of 40/80/160 channels; the paper's 8 is the "
                                               "config's attention_head_dim, which diffusers uses as the head count",
    ("Compute", "muse"): "compute class from genscope's counted FLOPs per image and its thresholds (the paper "
                         "gives no FLOP counts or boundaries)",
    ("Compute", "parti"): "compute class from genscope's counted FLOPs per image and its thresholds (the paper "
                          "gives no FLOP counts or boundaries)",
    ("Memory", "muse"): "memory class counts the whole pipeline in float16, T5-XXL (4.8B) included; the paper's "
                        "Low suggests the 3B transformer alone",
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _as_list(value) -> list | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        text = value.strip("[] ")
        return [int(float(x)) for x in text.split(",") if x.strip()] if text else []
    return [int(x) for x in value]


def _fmt(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float) and value >= 1e8:
        return f"{value / 1e9:.2f}B"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _params(row: pd.Series, paper: float) -> tuple[str, bool]:
    network, pipeline = float(row["network_params"]), float(row["params"])
    agrees = any(abs(v - paper) <= PARAMS_TOLERANCE * paper for v in (network, pipeline))
    return f"{network / 1e9:.2f}B network ({row['network_components']}); {pipeline / 1e9:.2f}B pipeline", agrees


def derived(row: pd.Series, name: str):
    """genscope's value for Table I row ``name`` (in the paper's unit for this model), or None."""
    w = row["workload"]
    column = {"Num Layers": "layers", "Model Dim": "model_dim", "Channel Mult": "channel_mult",
              "Num Res Blocks": "res_blocks", "Embed Dim": "text_embed_dim", "Compute": "compute_class",
              "Memory": "memory_class", "Latency": "latency_class", "Architecture": "architecture",
              "Attn Res": ATTN_RES_COLUMN.get(w, "attn_resolutions"),
              "Text Cross Attn Res": CROSS_RES_COLUMN.get(w, "cross_attn_resolutions")}.get(name)
    if name == "Per-Head Channels":
        column = "head_channels"
    if column is None or column not in row.index or _missing(row[column]):
        return None
    value = row[column]
    if name in ("Attn Res", "Text Cross Attn Res", "Channel Mult", "Per-Head Channels"):
        return _as_list(value)
    return value


def _compare(name: str, paper, mine) -> bool | None:
    if paper is None or _missing(mine) or mine == "not measured":
        return None
    if name == "Architecture":
        return str(mine).lower().startswith(str(paper).lower())
    if name == "Per-Head Channels":
        return mine == [paper]
    if isinstance(paper, list):
        return mine == paper
    try:
        return float(mine) == float(paper)
    except (TypeError, ValueError):
        return str(mine) == str(paper)


def align(taxonomy: pd.DataFrame) -> pd.DataFrame:
    """Table I's rows, paper vs genscope, for the models of the paper's Table I present in ``taxonomy``."""
    out = []
    for _, row in taxonomy.iterrows():
        w = row["workload"]
        published = PAPER_TABLE_I.get(w)
        if published is None:
            continue
        for name in ROWS:
            paper = published.get(name)
            if name == "Num Params":
                mine_text, agrees = _params(row, float(paper))
            else:
                mine = derived(row, name)
                if paper is None and mine is None:
                    continue
                agrees = _compare(name, paper, mine)
                mine_text = _fmt(mine) if mine is not None else ""
                if name == "Num Layers" and w in ENCODER_DECODER_LAYERS and "layers_parts" in row.index:
                    mine_text = f"{row['layers_parts']} = {mine_text}"
                if name == "Embed Dim" and mine is not None and not _missing(row.get("model_channels")):
                    mine_text += f" (text width; base channels {_fmt(row['model_channels'])})"
            why = ""
            if agrees is False:
                why = WHY.get((name, w), "no reason recorded")
            elif agrees is None:
                why = NOT_IN_PAPER if paper is None else "not measured (needs a stored small-preset breakdown)"
            out.append({"row": name, "workload": w, "paper": _fmt(paper) if paper is not None else "",
                        "genscope": mine_text, "agrees": agrees, "why": why})
    return pd.DataFrame(out, columns=["row", "workload", "paper", "genscope", "agrees", "why"])
