"""Float32 matmul precision: bfloat16 inside float32 matmuls, and whether this machine honours it.

``torch.set_float32_matmul_precision("medium")`` *allows* float32 matmuls to round their inputs to
bfloat16; it does not make them. On CUDA it takes effect on GPUs with bfloat16 tensor cores. On a
CPU it needs oneDNN's bfloat16 kernels, and some CPUs that report bfloat16 support (an AMD EPYC
with avx512_bf16, for one) keep their float32 kernels, so the setting changes results only by
float32 round-off. :func:`bfloat16_matmuls_in_effect` checks by experiment.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

__all__ = ["bfloat16_matmuls_in_effect", "medium_matmul_precision"]


@contextlib.contextmanager
def medium_matmul_precision() -> Iterator[None]:
    """``float32_matmul_precision("medium")`` inside the block, the previous setting after it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@functools.cache
def bfloat16_matmuls_in_effect() -> bool:
    """Whether a CPU float32 matmul of MNIST-VAE size (128 × 784 by 784 × 200) moves by more than
    1e-4 of its norm under :func:`medium_matmul_precision` — bfloat16 keeps 8 bits, so it moves
    by ~1e-3; float32 kernels move it by ~4e-7 at most. Measured once per process."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 784, generator=generator), torch.randn(784, 200, generator=generator)
    exact = a @ b
    with medium_matmul_precision():
        rounded = a @ b
    return bool((rounded - exact).norm() > 1e-4 * exact.norm())
