"""Winograd minimal-filtering transforms F(m x m, 3 x 3) and the analytical costs of Table 2.

Y = A^T [ (G g G^T) * (B^T d B) ] A  for a (m+2) x (m+2) input tile d and a 3 x 3 filter g
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, arXiv:1509.09308, Section 4).

* F(2x2, 3x3): the matrices printed in Lavin & Gray 2016, Section 4.1 (points 0, 1, -1 and infinity).
* F(4x4, 3x3): Lavin & Gray's matrices (Section 4.2; points 0, 1, -1, 2, -2) are kept as the ``lavin``
  variant, but the transforms used by default come from the same Toom-Cook construction with the points
  0, 3/2, -3/2, 2/3, -2/3: in float32 Lavin's points give 2.5-4.4x the relative error of direct
  convolution on SD-like layers (64-640 channels), which fails genscope's oracle (at most 2x), while these
  points give 1.1-1.9x. They were found by an exhaustive search over 5-point sets from
  {0, +-1/4, +-1/3, +-1/2, +-2/3, +-1, +-3/2, +-2, +-3, +-4} (measured on this checkout's machine, float32,
  normal and SiLU inputs); that the interpolation points govern Winograd's error is the subject of
  Barabasz, Anderson, Soodhalter & Gregg, "Error analysis and improving the accuracy of Winograd convolution
  for deep neural networks", ACM TOMS 46(4), 2020.
* F(6x6, 3x3): Toom-Cook with ``wincnn``'s default points 0, 1, -1, 2, -2, 1/2, -1/2 (the best 7-point set
  of the same search; no set brings F(6x6) within 2x of direct convolution in float32: 4.6-8.5x).

The Toom-Cook construction is that of Lavin's ``wincnn`` tool (github.com/andravin/wincnn,
``cookToomFilter``), in exact rational arithmetic; with the points 0, 1, -1, 2, -2 it reproduces Lavin &
Gray's F(4x4, 3x3) matrices exactly (checked in tests/test_passes.py).

Why hand-written: PyTorch never asks oneDNN for its Winograd algorithm (FIELD-NOTES), and no library
exposes the transforms for arbitrary tile sizes.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import torch

R = 3  # filter size: 3 x 3

# Lavin & Gray 2016, Section 4.1: F(2x2, 3x3)
LAVIN_F2 = {
    "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    "G": [[1, 0, 0], [Fraction(1, 2), Fraction(1, 2), Fraction(1, 2)], [Fraction(1, 2), Fraction(-1, 2), Fraction(1, 2)],
          [0, 0, 1]],
    "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
}
# Lavin & Gray 2016, Section 4.2: F(4x4, 3x3)
LAVIN_F4 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
           [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[Fraction(1, 4), 0, 0], [Fraction(-1, 6), Fraction(-1, 6), Fraction(-1, 6)],
          [Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)], [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)],
          [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}
# wincnn's default interpolation points (the point at infinity is implicit)
WINCNN_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2),
                 Fraction(-1, 2), Fraction(3), Fraction(-3))
TILES = (2, 4, 6)  # output tile sizes implemented (Table 2 also lists 8 analytically)


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _matmul(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0)) for j in range(len(b[0]))]
            for i in range(len(a))]


def toom_cook(m: int, r: int = R, points: tuple[Fraction, ...] = WINCNN_POINTS) -> dict[str, list[list[Fraction]]]:
    """A^T (m x n), G (n x r), B^T (n x n) for F(m, r), n = m + r - 1, as wincnn's ``cookToomFilter``.

    Finite points a_0..a_{n-2} plus infinity. With f_i = prod_{k != i} (a_i - a_k):
    A^T[j][i] = a_i^j (the infinity column is e_{m-1}); G[i][c] = a_i^c / F_i (the infinity row is e_{r-1}),
    with F = diag(f) and the sign of F_0 made positive;
    B^T = F * (L T)^T-extended, where row i of L holds the coefficients of prod_{k != i} (x - a_k) / f_i and
    T = [I | -a^(n-1)] appends the leading-coefficient correction (wincnn's ``Bt``/``B``).
    """
    n = m + r - 1
    a = list(points[: n - 1])
    if len(a) < n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} interpolation points, have {len(points)}")
    k = n - 1  # finite points
    f = []
    for i in range(k):
        prod = Fraction(1)
        for j in range(k):
            if j != i:
                prod *= a[i] - a[j]
        f.append(prod)
    # A^T: n columns (k points + infinity), m rows
    AT = [[a[i] ** j for i in range(k)] + [Fraction(1 if j == m - 1 else 0)] for j in range(m)]
    # L (k x k): L[i][j] = coefficient of x^j in prod_{l != i} (x - a_l), divided by f_i; wincnn transposes it
    L = []
    for i in range(k):
        poly = [Fraction(1)]
        for j in range(k):
            if j != i:
                poly = _poly_mul(poly, [-a[j], Fraction(1)])
        L.append([c / f[i] for c in poly])
    Lt = [[L[j][i] for j in range(k)] for i in range(k)]  # wincnn's L(a, n) is this transpose
    T = [[Fraction(1 if c == rr else 0) for c in range(k)] + [-(a[rr] ** k)] for rr in range(k)]  # k x n
    Bt_small = _matmul(Lt, T)  # k x n
    B = Bt_small + [[Fraction(1 if c == n - 1 else 0) for c in range(n)]]  # n x n  (wincnn's B)
    # fractions in G: F = diag(f_0..f_{k-1}, 1) with the first row's sign made positive
    fdiag = [f[i] for i in range(k)] + [Fraction(1)]
    if fdiag[0] < 0:
        fdiag[0] = -fdiag[0]
    # G = (A(a, n, r)^T F^-1)^T: row i of the Vandermonde divided by fdiag[i]; the infinity row is e_{r-1}
    G = [[(a[i] ** c / fdiag[i]) if i < k else Fraction(1 if c == r - 1 else 0) for c in range(r)] for i in range(n)]
    BT = [[fdiag[i] * B[j][i] for j in range(n)] for i in range(n)]  # F * B^T
    return {"AT": AT, "G": G, "BT": BT}


def _as_fractions(mats: dict) -> dict[str, list[list[Fraction]]]:
    return {k: [[Fraction(x) for x in row] for row in v] for k, v in mats.items()}


# F(4x4, 3x3) points used by default (see the module docstring: within 2x of direct convolution in float32)
ACCURATE_F4_POINTS = (Fraction(0), Fraction(3, 2), Fraction(-3, 2), Fraction(2, 3), Fraction(-2, 3))
VARIANTS = ("accurate", "lavin")


@functools.cache
def transform_fractions(m: int, variant: str = "accurate") -> dict[str, tuple[tuple[Fraction, ...], ...]]:
    """Exact transforms for F(m x m, 3 x 3).

    ``lavin``: Lavin & Gray's printed matrices for m = 2, 4 (Toom-Cook with wincnn's points otherwise);
    ``accurate`` (default): the same except F(4x4), built on :data:`ACCURATE_F4_POINTS`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Winograd variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    if m == 2:
        mats = _as_fractions(LAVIN_F2)
    elif m == 4:
        mats = _as_fractions(LAVIN_F4) if variant == "lavin" else toom_cook(4, points=ACCURATE_F4_POINTS)
    else:
        mats = toom_cook(m)
    return {k: tuple(tuple(row) for row in v) for k, v in mats.items()}


@functools.cache
def _transforms64(m: int, variant: str = "accurate") -> dict[str, torch.Tensor]:
    mats = transform_fractions(m, variant)
    return {k: torch.tensor([[float(x) for x in row] for row in v], dtype=torch.float64) for k, v in mats.items()}


def transforms(m: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               variant: str = "accurate") -> dict[str, torch.Tensor]:
    """``{"AT": [m, a], "G": [a, 3], "BT": [a, a]}`` as tensors (a = m + 2)."""
    return {k: v.to(dtype=dtype, device=device) for k, v in _transforms64(m, variant).items()}


@functools.cache
def _kron64(m: int, variant: str = "accurate") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D transforms as single matrices on flattened tiles (row-major (u, v) -> u*a + v).

    KB = kron(B^T, B^T): [a^2, a^2] (input), KG = kron(G, G): [a^2, 9] (filter), KA = kron(A^T, A^T): [m^2, a^2].
    """
    t = _transforms64(m, variant)
    return torch.kron(t["BT"], t["BT"]), torch.kron(t["G"], t["G"]), torch.kron(t["AT"], t["AT"])


def kron_transforms(m: int, dtype: torch.dtype, device: torch.device | str = "cpu", variant: str = "accurate"):
    return tuple(x.to(dtype=dtype, device=device) for x in _kron64(m, variant))


# ----------------------------------------------------------------------------------------------------
# Table 2 of Chen et al. 2023: analytical costs of F(m x m, 3 x 3) relative to direct 3x3 convolution
# ----------------------------------------------------------------------------------------------------
def flops_saving(m: int, r: int = R) -> float:
    """Multiplications of direct convolution / Winograd per m x m output tile: (m^2 r^2) / (m + r - 1)^2."""
    return (m * m * r * r) / (m + r - 1) ** 2


def tensor_multiplier(m: int, r: int = R) -> float:
    """Transformed-input elements per input element: (m + r - 1)^2 / m^2 (each tile overlaps by r - 1)."""
    return (m + r - 1) ** 2 / (m * m)


def weight_multiplier(m: int, r: int = R) -> float:
    """Transformed-filter elements per filter element: (m + r - 1)^2 / r^2."""
    return (m + r - 1) ** 2 / (r * r)


def transform_macs(m: int, channels_in: int, channels_out: int, tiles: int) -> dict[str, int]:
    """Multiply-accumulates of one Winograd convolution as implemented here (kron-form transforms).

    input transform a^4 per (tile, input channel); elementwise stage a^2 * C * K per tile; output transform
    m^2 a^2 per (tile, output channel). Direct convolution: m^2 * 9 * C * K per tile.
    """
    a = m + 2
    return {"input_transform": a**4 * channels_in * tiles, "product": a * a * channels_in * channels_out * tiles,
            "output_transform": m * m * a * a * channels_out * tiles,
            "direct": m * m * 9 * channels_in * channels_out * tiles}
