"""Kernels of the passes: :mod:`cpu` (plain PyTorch), :mod:`triton_kernels` (CUDA; imported only when Triton
can run), :mod:`winograd_math` (transforms and Table 2's analytical costs)."""
