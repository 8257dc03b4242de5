"""Published ceilings of the GPUs the roofline study places workloads on (the paper's Figure 5 uses the A100).

Every value is NVIDIA's published peak: dense tensor-core throughput (no 2:4 structured sparsity) for TF32,
BF16 and FP16, the non-tensor-core FP32 rate, and the peak HBM bandwidth. Where a datasheet gives only the
"with sparsity" figure (marked * there), the dense figure is half of it, as the same datasheets' footnotes
state. Sources, cited per value below:

* [A100-DS] "NVIDIA A100 Tensor Core GPU" datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf, 2021),
  column "A100 80GB SXM": FP32 19.5 TFLOPS; TF32 Tensor Core 156 TFLOPS (312* with sparsity); BFLOAT16 and
  FP16 Tensor Core 312 TFLOPS (624*); GPU memory bandwidth 2,039 GB/s.
* [H100-WP] "NVIDIA H100 Tensor Core GPU Architecture" whitepaper (V1.0x, 2022), table "NVIDIA H100 SXM5 ...
  peak": FP32 66.9 TFLOPS; TF32 Tensor 494.7 TFLOPS (989.4 sparse); FP16 and BF16 Tensor 989.4 TFLOPS
  (1978.9 sparse). [H100-DS] "NVIDIA H100 Tensor Core GPU" datasheet, column "H100 SXM": GPU memory
  bandwidth 3.35 TB/s.
* [H200-DS] "NVIDIA H200 Tensor Core GPU" datasheet (2024), column "H200 SXM": FP32 67 TFLOPS; TF32 Tensor
  Core 989 TFLOPS*, BFLOAT16 and FP16 Tensor Core 1,979 TFLOPS* (* with sparsity: dense 494.5 and 989.5);
  GPU memory 141 GB HBM3e, bandwidth 4.8 TB/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genscope.errors import choice_error

TERA = 1e12
DTYPES = ("float32", "tfloat32", "bfloat16", "float16")
# genscope dtype names -> the ceiling a matmul in that dtype runs at on a tensor-core GPU
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "tf32": "tfloat32", "tfloat32": "tfloat32",
                 "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
                 "half": "float16"}


@dataclass(frozen=True)
class DeviceSpec:
    """Peak dense FLOP/s per dtype and peak memory bandwidth of one device, with their sources."""

    name: str
    description: str
    peak_flops_per_s: dict[str, float]  # dtype -> FLOP/s (dense)
    bandwidth_bytes_per_s: float
    memory_bytes: float
    sources: dict[str, str] = field(default_factory=dict)  # "float16" / "bandwidth" / ... -> citation

    def peak(self, dtype: str) -> float:
        key = DTYPE_ALIASES.get(str(dtype).removeprefix("torch."), str(dtype))
        if key not in self.peak_flops_per_s:
            raise choice_error(f"dtype for {self.name}", dtype, list(self.peak_flops_per_s))
        return self.peak_flops_per_s[key]

    def ridge_flops_per_byte(self, dtype: str) -> float:
        """Arithmetic intensity where the memory roof meets the compute roof."""
        return self.peak(dtype) / self.bandwidth_bytes_per_s

    def attainable_flops_per_s(self, intensity_flops_per_byte: float, dtype: str) -> float:
        """The roofline: min(peak, intensity x bandwidth)."""
        return min(self.peak(dtype), intensity_flops_per_byte * self.bandwidth_bytes_per_s)


A100_80GB_SXM = DeviceSpec(
    name="A100-80GB",
    description="NVIDIA A100 80GB SXM4 (the paper's GPU)",
    peak_flops_per_s={"float32": 19.5 * TERA, "tfloat32": 156 * TERA, "bfloat16": 312 * TERA,
                      "float16": 312 * TERA},
    bandwidth_bytes_per_s=2039e9,
    memory_bytes=80e9,
    sources={
        "float32": "A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), A100 80GB SXM: FP32 19.5 TFLOPS",
        "tfloat32": "A100 datasheet, A100 80GB SXM: TF32 Tensor Core 156 TFLOPS (312 with sparsity)",
        "bfloat16": "A100 datasheet, A100 80GB SXM: BFLOAT16 Tensor Core 312 TFLOPS (624 with sparsity)",
        "float16": "A100 datasheet, A100 80GB SXM: FP16 Tensor Core 312 TFLOPS (624 with sparsity)",
        "bandwidth": "A100 datasheet, A100 80GB SXM: GPU memory bandwidth 2,039 GB/s",
    },
)

H100_SXM = DeviceSpec(
    name="H100",
    description="NVIDIA H100 SXM5 80GB",
    peak_flops_per_s={"float32": 66.9 * TERA, "tfloat32": 494.7 * TERA, "bfloat16": 989.4 * TERA,
                      "float16": 989.4 * TERA},
    bandwidth_bytes_per_s=3.35e12,
    memory_bytes=80e9,
    sources={
        "float32": "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 SXM5: peak FP32 66.9 TFLOPS",
        "tfloat32": "H100 architecture whitepaper, H100 SXM5: peak TF32 Tensor 494.7 TFLOPS (989.4 sparse)",
        "bfloat16": "H100 architecture whitepaper, H100 SXM5: peak BF16 Tensor 989.4 TFLOPS (1978.9 sparse)",
        "float16": "H100 architecture whitepaper, H100 SXM5: peak FP16 Tensor 989.4 TFLOPS (1978.9 sparse)",
        "bandwidth": "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: GPU memory bandwidth 3.35 TB/s",
    },
)

H200_SXM = DeviceSpec(
    name="H200",
    description="NVIDIA H200 SXM 141GB",
    peak_flops_per_s={"float32": 67 * TERA, "tfloat32": 494.5 * TERA, "bfloat16": 989.5 * TERA,
                      "float16": 989.5 * TERA},
    bandwidth_bytes_per_s=4.8e12,
    memory_bytes=141e9,
    sources={
        "float32": "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: FP32 67 TFLOPS",
        "tfloat32": "H200 datasheet, H200 SXM: TF32 Tensor Core 989 TFLOPS with sparsity -> 494.5 dense",
        "bfloat16": "H200 datasheet, H200 SXM: BFLOAT16 Tensor Core 1,979 TFLOPS with sparsity -> 989.5 dense",
        "float16": "H200 datasheet, H200 SXM: FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.5 dense",
        "bandwidth": "H200 datasheet, H200 SXM: GPU memory bandwidth 4.8 TB/s (141 GB HBM3e)",
    },
)

SPECS: dict[str, DeviceSpec] = {s.name: s for s in (A100_80GB_SXM, H100_SXM, H200_SXM)}
ALIASES = {"a100": "A100-80GB", "a100-80gb": "A100-80GB", "a100-80gb-sxm": "A100-80GB", "a100-sxm": "A100-80GB",
           "h100": "H100", "h100-sxm": "H100", "h100-sxm5": "H100", "h200": "H200", "h200-sxm": "H200"}
DEFAULT_SPEC = "A100-80GB"


def get_spec(name: str) -> DeviceSpec:
    """A device spec by name (case-insensitive; ``A100``, ``H100-SXM`` accepted); unknown -> UserError."""
    key = ALIASES.get(str(name).lower(), name)
    if key not in SPECS:
        raise choice_error("device spec", name, list(SPECS))
    return SPECS[key]


def spec_names() -> list[str]:
    return list(SPECS)


# ----------------------------------------------------------------------------------------------------
# Interconnects of multi-GPU training (the paper's Figure 6: FSDP over nodes of 8 A100s)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InterconnectSpec:
    """A cluster's links as a ring collective sees them, with their sources.

    ``intra_node_bus_bytes_per_s``: the bus bandwidth of a ring among the GPUs of one node (NVLink/NVSwitch);
    ``inter_node_bus_bytes_per_s``: the bus bandwidth of a ring that spans nodes - the node's network bandwidth
    (all its NICs; NCCL runs one ring channel per NIC, each carrying its share of the data), capped by the
    intra-node figure. Latencies per ring step, and the fixed latency per collective, are NCCL's own model
    of its ring/Simple protocol.
    """

    name: str
    description: str
    gpu: str  # the DeviceSpec name of its GPUs
    gpus_per_node: int
    intra_node_bus_bytes_per_s: float
    inter_node_bus_bytes_per_s: float
    base_latency_s: float
    intra_step_latency_s: float
    inter_step_latency_s: float
    sources: dict[str, str] = field(default_factory=dict)


NVLINK3_PER_GPU_BYTES_PER_S = 600e9  # both directions together; 300e9 each way
HDR_IB_PORT_BYTES_PER_S = 200e9 / 8  # 200 Gb/s per port -> 25 GB/s per direction
NCCL_SOURCE = ("NCCL src/graph/tuning.cc (github.com/NVIDIA/nccl, commit 01afd20a): ring/Simple baseLat 8.4 us, "
               "hwLat NVLink ring/Simple 3.4 us and NET ring/Simple 9.6 us per step; busBw capped at 235 GB/s on "
               "compute capability 8.0 (A100)")

DGX_A100_HDR = InterconnectSpec(
    name="dgx-a100-hdr",
    description="DGX A100 nodes (8x A100 80GB SXM, NVSwitch) on 8x 200 Gb/s HDR InfiniBand per node",
    gpu="A100-80GB",
    gpus_per_node=8,
    # NVLink3: 600 GB/s per GPU (300 GB/s each way); NCCL models an A100 ring at no more than 235 GB/s
    intra_node_bus_bytes_per_s=min(NVLINK3_PER_GPU_BYTES_PER_S / 2, 235e9),
    inter_node_bus_bytes_per_s=min(8 * HDR_IB_PORT_BYTES_PER_S, 235e9),
    base_latency_s=8.4e-6,
    intra_step_latency_s=3.4e-6,
    inter_step_latency_s=9.6e-6,
    sources={
        "gpus_per_node": "the paper (Golden et al., Sec. III Hardware Systems): each node consists of 8 A100 GPUs",
        "nvlink": "A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), A100 80GB SXM: NVLink "
                  "600 GB/s (third-generation NVLink, both directions)",
        "infiniband": "NVIDIA DGX A100 datasheet / user guide: 8x single-port ConnectX-6 VPI 200 Gb/s HDR "
                      "InfiniBand for the compute fabric; Meta's Research SuperCluster (A100 DGX nodes, the "
                      "paper's authors' company): 'NVIDIA Quantum 1600 Gb/s InfiniBand' per node (RSC blog, 2022)",
        "hdr_port": "InfiniBand HDR: 200 Gb/s per 4x port (InfiniBand Trade Association roadmap)",
        "latency": NCCL_SOURCE,
        "bus_cap": NCCL_SOURCE,
    },
)

INTERCONNECTS: dict[str, InterconnectSpec] = {s.name: s for s in (DGX_A100_HDR,)}


def get_interconnect(name: str) -> InterconnectSpec:
    if name not in INTERCONNECTS:
        raise choice_error("interconnect", name, list(INTERCONNECTS))
    return INTERCONNECTS[name]
