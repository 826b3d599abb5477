"""How the drawn parameters are applied: the spec's photometric ops and normalisation.

Every executor crops and flips first (geometry), then finishes each uint8 view here with the
view's ``param_row`` row: colour jitter in the sample's own order, grayscale, gaussian blur,
solarize, normalise to the spec's mean/std. The semantics (PIL's ops as the reference recipe
applies them, without uint8 rounding between ops) are stated once, in ``torch_ops``'
docstring; every implementation below computes them and is tested against the others:

    params.py       the per-sample parameters as tensors (from param rows or explicit views)
    torch_ops.py    batched torch tensor ops, any device: the plain, op-at-a-time twin
    cpu_kernel.py   the fused numba kernel, one view streamed through the cache row by row
                    (the FFCV executor's CPU finish; needs numba)
    cuda.py         the fused CUDA kernel (csrc/photometric_kernel.cu, built into the
                    project's kernel library, pipelines.kernels), two launches for all view
                    sizes of a batch; its math is the header csrc/photometric.cuh
    host_twin.py    that header (and the kernel's tiling, csrc/photometric_tile.cuh) built
                    for the host with a C++ compiler: how the CUDA code is tested on a CPU

``finish.finish_views`` picks one per device; ``constants`` holds what the compiled kernels
take from the spec and ``kernel_abi`` the kernel's C interface for ctypes.

What is drawn lives in ``pipelines.sampling``.
"""
