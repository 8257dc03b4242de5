"""The one table that maps ATen ops and GPU kernel names to operator classes (the paper's Figure 7 classes).

Classes: Attention, Convolution, Linear, GroupNorm, LayerNorm, Activation, Elementwise, Softmax, Memory,
Communication, Other. Every op lands in exactly one class; what lands in Other is reported by name.

Attribution rule used by the profiler: an op inside an attention entry-point call (the range
``genscope::attention``) is Attention regardless of its own class - the Q/K/V/out projections are outside
that range and count as Linear, as the paper's breakdown reports them (stated in every table).
"""

from __future__ import annotations

import re
from functools import lru_cache

OP_CLASSES = ("Attention", "Convolution", "Linear", "GroupNorm", "LayerNorm", "Activation", "Elementwise",
              "Softmax", "Memory", "Communication", "Other")

# ATen op name (without the "aten::" prefix) -> class. Exact names first, then patterns.
_EXACT: dict[str, str] = {}


def _add(cls: str, *names: str) -> None:
    for n in names:
        _EXACT[n] = cls


_add("Attention", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
     "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
     "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward",
     "_scaled_dot_product_attention_math", "_fused_sdp_choice")
_add("Convolution", "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose2d",
     "conv_transpose3d", "mkldnn_convolution", "cudnn_convolution", "_nnpack_spatial_convolution",
     "slow_conv2d_forward", "_slow_conv2d_forward", "slow_conv3d_forward", "convolution_overrideable",
     "_mkldnn_convolution", "mkldnn_rnn_layer", "thnn_conv2d", "slow_conv_dilated2d",
     "slow_conv_transpose2d", "cudnn_convolution_transpose", "mkldnn_convolution_transpose",
     "_convolution_pointwise", "mkldnn_reorder_conv2d_weight", "to_mkldnn")
_add("Linear", "linear", "addmm", "mm", "bmm", "baddbmm", "matmul", "_addmm_activation", "addbmm", "einsum",
     "mkldnn_linear", "_mkl_linear", "dot", "mv", "addmv", "tensordot", "_int_mm", "_linear_pointwise")
_add("GroupNorm", "group_norm", "native_group_norm")
_add("LayerNorm", "layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "batch_norm",
     "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "_batch_norm_impl_index",
     "instance_norm")
_add("Activation", "silu", "silu_", "gelu", "gelu_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
     "mish", "leaky_relu", "hardswish", "elu", "softplus", "glu")
_add("Softmax", "softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax")
_add("Memory", "copy_", "_to_copy", "to", "contiguous", "clone", "cat", "stack", "empty", "empty_like",
     "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "fill_", "zero_",
     "resize_", "index_select", "gather", "scatter", "scatter_", "index", "index_put_", "_unsafe_view",
     "view", "reshape", "permute", "transpose", "t", "expand", "as_strided", "slice", "select", "squeeze",
     "unsqueeze", "flatten", "unflatten", "split", "split_with_sizes", "chunk", "narrow", "repeat",
     "repeat_interleave", "roll", "flip", "pad", "constant_pad_nd", "upsample_nearest2d", "_upsample_nearest_exact2d",
     "upsample_bilinear2d", "upsample_nearest3d", "embedding", "detach", "alias", "lift_fresh",
     "_reshape_alias", "masked_fill", "masked_fill_", "where", "tril", "triu", "arange", "linspace",
     "randn", "rand", "normal_", "uniform_", "item", "_local_scalar_dense", "unfold", "im2col", "col2im",
     "new_empty", "new_zeros", "new_ones", "new_full", "resolve_conj", "resolve_neg", "set_", "view_as",
     "expand_as", "movedim", "unbind", "contiguous_format", "_reshape_copy", "pixel_shuffle", "pixel_unshuffle",
     "channel_shuffle", "tile", "broadcast_to", "index_copy", "index_add", "take_along_dim", "argmax",
     "argmin", "topk", "sort", "argsort", "multinomial", "nonzero", "masked_select", "one_hot", "clamp",
     "clamp_", "clamp_min", "clamp_max", "_pin_memory", "record_stream")
_add("Communication", "all_reduce", "all_gather", "reduce_scatter", "broadcast", "_allgather_base",
     "_reduce_scatter_base", "allreduce_", "allgather_", "send", "recv", "barrier")
_add("Elementwise", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "exp", "exp_", "log",
     "pow", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal", "addcmul", "addcdiv", "lerp", "sum",
     "mean", "var", "std", "max", "min", "amax", "amin", "cumsum", "prod", "norm", "linalg_vector_norm",
     "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "bitwise_not", "round",
     "floor", "ceil", "sign", "square", "rsub", "maximum", "minimum", "expm1", "log1p", "sigmoid_backward",
     "fmod", "remainder", "any", "all", "isnan", "isinf", "nan_to_num", "floor_divide", "true_divide", "mul_out",
     "_foreach_add", "_foreach_mul", "exponential_", "addcmul_", "addcdiv_", "var_mean", "std_mean",
     "logsumexp", "cumprod", "sub_out", "atan", "atan2", "hypot")

# Unknown-op name patterns, checked in order (lowercase): ops outside the tables above (custom ops, other
# libraries' ops) are classed by what their name says.
_PATTERNS: list[tuple[str, re.Pattern]] = [(cls, re.compile(p)) for cls, p in [
    ("Attention", r"flash|fmha|attention|sdpa|mha_"),
    ("Communication", r"nccl|gloo|allreduce|allgather|reducescatter|all_reduce|all_gather"),
    ("Convolution", r"conv|winograd|implicit_gemm|cudnn.*fprop|dgrad|wgrad|fprop"),
    ("GroupNorm", r"group_?norm"),
    ("LayerNorm", r"layer_?norm|rms_?norm|batch_?norm"),
    ("Softmax", r"softmax"),
    ("Linear", r"gemm|gemv|cublas|cutlass|matmul|sm\d+_xmma|ampere_.*gemm|addmm|\bmm\b|bmm"),
    ("Activation", r"silu|gelu|relu|sigmoid|tanh|swish|geglu|mish"),
    ("Memory", r"copy|memcpy|memset|cat|transpose|permute|gather|scatter|index|fill|upsample|pad|contiguous"),
    ("Elementwise", r"elementwise|vectorized|reduce|unrolled|add|mul|div|sum|mean|pow|exp"),
]]

# GPU kernel names -> class, checked in order (case-insensitive), for kernels whose launching op gives no class
# (no op, or an op of class Other). Data, not code: a kernel seen in Other is one line here. The names are those
# of the NVIDIA H200 traces in shared/fixtures/h200-traces (CUDA 13, cuBLAS/cuBLASLt nvjet_* GEMMs, cuDNN v9)
# and of the libraries' sources (PyTorch ATen CUDA kernels, FlashAttention, CUTLASS, NCCL).
KERNEL_PATTERNS: list[tuple[str, re.Pattern]] = [(cls, re.compile(p, re.IGNORECASE)) for cls, p in [
    ("Attention", r"flash_fwd|flash_bwd|flash::|fmha|pytorch_flash|efficient_attention|attention_kernel|"
                  r"cutlassf_|mha_|sdpa"),
    ("Communication", r"nccl|allreduce|allgather|reducescatter|sendrecv"),
    # cuDNN convolutions and the layout transposes cuDNN runs around them (NCHW <-> NHWC)
    ("Convolution", r"conv|winograd|implicit_?gemm|fprop|dgrad|wgrad|nchwtonhwc|nhwctonchw|cudnn"),
    ("GroupNorm", r"group_?norm|rowwisemoments|computefusedparams|groupnorm"),
    ("LayerNorm", r"layer_?norm|rms_?norm|batch_?norm"),
    ("Softmax", r"softmax"),
    # cuBLAS / cuBLASLt GEMMs (nvjet_* on Hopper), their split-K reductions, GEMVs, CUTLASS GEMMs
    ("Linear", r"nvjet|gemm|gemv|splitkreduce|cublas|cutlass|xmma|matmul|sm\d+_"),
    ("Activation", r"silu|gelu|relu|sigmoid|tanh|swish|geglu|mish"),
    ("Memory", r"copy|memcpy|memset|catarray|\bcat|transpose|permute|gather|scatter|index|fill|upsample|"
               r"\bpad|contiguous|triu_tril|arange|embedding"),
    ("Elementwise", r"elementwise|vectorized|reduce|unrolled|add|mul|div|sum|mean|pow|exp|rsqrt|neg"),
]]

# Leaf modules whose class fixes the operator class of the ops inside them (an RMSNorm written as pow/mean/rsqrt
# ops is LayerNorm). Used by the trace attribution (innermost module) and the fast-mode timers.
MODULE_CLASSES: dict[str, str] = {
    "Conv1d": "Convolution", "Conv2d": "Convolution", "Conv3d": "Convolution", "LoRACompatibleConv": "Convolution",
    "ConvTranspose2d": "Convolution", "Linear": "Linear", "LoRACompatibleLinear": "Linear",
    "GroupNorm": "GroupNorm", "LayerNorm": "LayerNorm", "RMSNorm": "LayerNorm", "T5LayerNorm": "LayerNorm",
    "LlamaRMSNorm": "LayerNorm", "SiLU": "Activation", "GELU": "Activation", "ReLU": "Activation",
    "Mish": "Activation", "Tanh": "Activation", "Sigmoid": "Activation", "QuickGELUActivation": "Activation",
    "GELUActivation": "Activation", "NewGELUActivation": "Activation", "SiLUActivation": "Activation",
    "GEGLU": "Activation", "FusedGroupNormSiLU": "GroupNorm", "FusedGroupNorm": "GroupNorm",
    "WinogradConv2d": "Convolution", "ChannelsLastConv2d": "Convolution", "FusedGEGLU": "Activation",
}

ATTENTION_RANGE = "genscope::attention"
# operator namespaces whose op names are looked up in the tables (oneDNN's fused ops live in mkldnn::)
OP_NAMESPACES = ("aten::", "mkldnn::", "prims::", "quantized::")


@lru_cache(maxsize=65536)
def op_class(name: str) -> str:
    """Class of an ATen op (``aten::conv2d`` or ``conv2d``) or a GPU kernel name; ``Other`` if unknown."""
    base = name.split("::", 1)[1] if name.startswith(OP_NAMESPACES) else name
    base = base.split(".", 1)[0]  # overload names: add.Tensor -> add
    if base in _EXACT:
        return _EXACT[base]
    if base.endswith("_") and base[:-1] in _EXACT:
        return _EXACT[base[:-1]]
    lowered = name.lower()
    for cls, pattern in _PATTERNS:
        if pattern.search(lowered):
            return cls
    return "Other"


@lru_cache(maxsize=65536)
def kernel_class(name: str) -> str:
    """Class of a GPU kernel by its name (:data:`KERNEL_PATTERNS`); ``Other`` if none matches."""
    for cls, pattern in KERNEL_PATTERNS:
        if pattern.search(name):
            return cls
    return "Other"
