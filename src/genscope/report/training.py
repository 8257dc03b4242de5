"""Report section of FSDP training (paper Figure 6): compute vs communication per number of ranks, from stored
tables only.

Stored runs read: study ``training`` (``genscope train``: ``summary`` with the per-step split of the measured
ranks, ``collectives``, ``validation``; the newest run per model and world size) and study ``training-model``
(``genscope train-predict``: ``prediction`` per model and GPU count, ``assumptions``; the newest run).
"""

from __future__ import annotations

import pandas as pd

from genscope.report.sections import (
    caption,
    details,
    esc,
    figure_to_img,
    new_figure,
    paragraph,
    section,
    table_html,
)
from genscope.results.store import ResultsStore, RunRecord

MEASURED, PREDICTED = "training", "training-model"
FILL_COMMAND = "genscope train stable-diffusion --preset small --nproc 2 --steps 3; genscope train-predict"
COLORS = {"compute": "#1f77b4", "overlapped": "#9ecae1", "exposed": "#d62728", "idle": "#c7c7c7"}
PAPER_TREND = ("The paper (Golden et al., Sec. III, Fig. 6) trains Stable Diffusion with FSDP on 2, 8 and 16 A100s "
               "(8 per node) and shows how compute and communication scale as training spreads over more nodes; "
               "its text gives no numbers. Expect communication's share to grow with N, most where the ring "
               "leaves the node (16 GPUs).")


def _stacked(ax, labels: list[str], compute, overlapped, exposed, idle=None, title: str = "") -> None:
    """Bars: compute not overlapped, compute overlapped with communication, exposed communication, idle."""
    x = range(len(labels))
    only = [c - o for c, o in zip(compute, overlapped, strict=True)]
    ax.bar(x, only, 0.6, color=COLORS["compute"], label="compute (no communication)")
    ax.bar(x, overlapped, 0.6, bottom=only, color=COLORS["overlapped"], label="compute overlapped by communication")
    ax.bar(x, exposed, 0.6, bottom=list(compute), color=COLORS["exposed"], label="exposed communication")
    if idle is not None:
        ax.bar(x, idle, 0.6, bottom=[c + e for c, e in zip(compute, exposed, strict=True)], color=COLORS["idle"],
               label="idle (framework, waiting)")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("time per step (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)


def _measured_runs(store: ResultsStore) -> list[RunRecord]:
    runs = store.list_runs(study=MEASURED)
    if runs.empty:
        return []
    newest: dict[tuple, RunRecord] = {}
    for run_id in sorted(runs["id"]):
        rec = store.load_run(int(run_id))
        if "summary" not in rec.tables or rec.tables["summary"].empty:
            continue
        s = rec.tables["summary"].iloc[0]
        newest[(rec.workload, rec.preset, str(s.get("backend", "")), int(s["world_size"]))] = rec
    return [newest[k] for k in sorted(newest, key=lambda k: (k[0], k[1], k[2] != "fake", k[3]))]


def measured_figure(records: list[RunRecord]) -> str:
    rows = [r.tables["summary"].iloc[0] for r in records]
    labels = [f"{s['model']} @ {s['preset']}\nN={int(s['world_size'])} {s['backend']}" for s in rows]
    fig = new_figure(max(5.0, 1.6 * len(rows) + 2), 4.2)
    _stacked(fig.add_subplot(1, 1, 1), labels, [float(s["compute_ms"]) for s in rows],
             [float(s["overlapped_ms"]) for s in rows], [float(s["exposed_comm_ms"]) for s in rows],
             [float(s["idle_ms"]) for s in rows], title="measured on this machine (mean over ranks and steps)")
    return figure_to_img(fig, alt="Figure 6 analogue, measured: compute, overlapped and exposed communication")


def predicted_figure(pred: pd.DataFrame, gpus: tuple[int, ...] = (2, 8, 16)) -> str:
    models = list(dict.fromkeys(pred["model"]))
    fig = new_figure(4.0 * len(models), 4.2)
    for i, model in enumerate(models):
        sel = pred[(pred["model"] == model) & pred["gpus"].isin(gpus)].sort_values("gpus")
        _stacked(fig.add_subplot(1, len(models), i + 1), [f"{int(n)} GPUs" for n in sel["gpus"]],
                 sel["compute_ms"].tolist(), sel["overlapped_ms"].tolist(), sel["exposed_comm_ms"].tolist(),
                 title=f"{model}: predicted at paper scale")
    return figure_to_img(fig, alt="Figure 6 analogue, predicted at paper scale for 2, 8 and 16 GPUs")


def scaling_figure(pred: pd.DataFrame) -> str:
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for model in dict.fromkeys(pred["model"]):
        sel = pred[pred["model"] == model].sort_values("gpus")
        ax.plot(sel["gpus"], 100 * sel["exposed_comm_ms"] / sel["step_ms"], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs (8 per node)")
    ax.set_ylabel("exposed communication (% of step)")
    ax.legend(fontsize=7)
    return figure_to_img(fig, alt="exposed communication share from 2 to 1,024 GPUs")


@section(MEASURED, title="Distributed training: compute vs communication (paper Figure 6)", order=55,
         fill_command=FILL_COMMAND)
def training_section(store: ResultsStore) -> list[str]:
    out: list[str] = []
    measured = _measured_runs(store)
    predicted = store.latest(PREDICTED)
    if not measured and predicted is None:
        return []
    out.append(paragraph(PAPER_TREND))
    if measured:
        out.append("<h3>Measured: FSDP2 ranks on this machine</h3>")
        out.append(measured_figure(measured))
        first = measured[-1].tables["summary"].iloc[0]
        out.append(caption(measured, extra=(
            f"Each bar: one genscope train run, torch.profiler trace of every rank; compute = the rank's main-thread "
            f"operators, communication = the collectives on gloo's threads (NCCL kernels on GPUs); exposed = "
            f"communication while no compute runs. Ranks on one machine share its cores and memory bus, so "
            f"communication here is loopback and competes with compute; {int(first.get('threads_per_rank') or 0)} "
            f"thread(s) per rank in the newest run.")))
        cols = ["model", "preset", "world_size", "backend", "device", "precision", "threads_per_rank", "window_ms",
                "compute_ms", "communication_ms", "overlapped_ms", "exposed_comm_ms", "idle_ms", "comm_share",
                "all_gather_bytes_per_step", "reduce_scatter_bytes_per_step", "loss_finite"]
        table = pd.concat([r.tables["summary"] for r in measured], ignore_index=True)
        out.append(table_html(table[[c for c in cols if c in table.columns]]))
        checks = pd.concat([r.tables["validation"].assign(run=r.id, world_size=r.tables["summary"].iloc[0][
            "world_size"]) for r in measured if "validation" in r.tables], ignore_index=True)
        if not checks.empty:
            out.append(details("The analytical model at this scale: predicted vs measured bytes (exact) and "
                               "compute time (FLOPs / measured matmul ceiling)", table_html(checks)))
    if predicted is not None:
        pred = predicted.tables["prediction"]
        out.append("<h3>Predicted at paper scale (analytical, meta device)</h3>")
        out.append(predicted_figure(pred))
        sd = pred[(pred["model"] == "stable-diffusion") & pred["gpus"].isin([2, 8, 16])].sort_values("gpus")
        trend = "; ".join(f"{int(r.gpus)} GPUs {100 * r.comm_share:.0f}% of compute+communication, "
                          f"{r.exposed_comm_ms:.1f} ms exposed" for r in sd.itertuples())
        out.append(caption(predicted, extra=(
            f"Per GPU and step; FSDP2 all-gathers (blocks twice, root once) and reduce-scatters from the parameter "
            f"counts, NCCL's ring model over NVLink inside a node and InfiniBand across nodes. Stable Diffusion: "
            f"{trend}. Same direction as the paper's Figure 6: communication grows with N while per-GPU compute "
            f"stays (weak scaling).")))
        out.append(scaling_figure(pred))
        out.append(table_html(pred[["model", "gpus", "nodes", "compute_ms", "communication_ms", "overlapped_ms",
                                    "exposed_comm_ms", "step_ms", "comm_share", "all_gather_bytes",
                                    "reduce_scatter_bytes"]]))
        if "assumptions" in predicted.tables:
            out.append(details("Assumptions and sources", table_html(predicted.tables["assumptions"])))
    out.append(f'<p class="caption">{esc("Commands: " + FILL_COMMAND)}</p>')
    return out
