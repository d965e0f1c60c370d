"""The one image resize of the product: training, calibration, scoring, evaluation and the exported graph.

Bilinear with antialiasing, half-pixel centres: each output pixel is the triangle-filter-weighted mean of the
input pixels under it, the filter widened by the shrink factor (PIL's and ``torch.nn.functional.interpolate(...,
mode="bilinear", antialias=True)``'s definition; they agree to float32 rounding). It is written as two small
matrix products so that exactly the same arithmetic runs in torch and, traced, in ONNX (plain MatMul / Range /
Abs ops with a dynamic input size), where onnxruntime's own antialiased ``Resize`` differs from torch's by up
to 0.05 of the value range.
"""

from __future__ import annotations

import numpy as np
import torch

METHOD = "bilinear-antialias"  # the name written into exported metadata
METHOD_DOC = (
    "bilinear with antialiasing, half-pixel centres (= torch.nn.functional.interpolate(x, size, mode='bilinear', "
    "align_corners=False, antialias=True) and PIL's BILINEAR), on float RGB in [0, 1]"
)


def resize_weights(
    n_in: int | torch.Tensor, n_out: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """(n_out, n_in) matrix whose rows are the normalised triangle-filter weights of each output pixel, built on
    ``device`` (no host-to-GPU copy in the forward pass: it would stall the GPU queue and break CUDA graphs)."""
    if isinstance(n_in, torch.Tensor):  # a traced (ONNX) size
        scale = n_in.to(dtype=dtype, device=device) / n_out
    else:  # filled on the device: torch.as_tensor(int, device=cuda) would copy from the host
        scale = torch.full((), n_in, dtype=dtype, device=device) / n_out
    centres = (torch.arange(n_out, dtype=dtype, device=device) + 0.5) * scale
    positions = torch.arange(n_in, dtype=dtype, device=device) + 0.5
    return _triangle(positions, centres, scale)


def _triangle(
    positions: torch.Tensor, centres: torch.Tensor, scale: torch.Tensor, inside: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised triangle-filter weights (..., n_out, n_in) of input ``positions`` (n_in,) around output
    ``centres`` (..., n_out), for a shrink factor ``scale`` broadcastable to (...); only input pixels where
    ``inside`` (..., 1, n_in) holds get weight."""
    support = scale.clamp(min=1.0)[..., None, None]  # shrinking widens the filter (antialiasing); enlarging is
    # plain bilinear
    weights = torch.relu(1 - (positions - centres[..., None]).abs() / support)
    if inside is not None:
        weights = weights * inside
    return weights / weights.sum(-1, keepdim=True)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (..., H, W) float tensors to ``size`` = (height, width)."""
    height, width = x.shape[-2:]
    rows = resize_weights(height, size[0], x.dtype, x.device)
    cols = resize_weights(width, size[1], x.dtype, x.device)
    return rows @ x @ cols.T


def crop_resize(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops of a batch (N, C, H, W), image i's at (``top[i]``, ``left[i]``) of side ``side[i]`` (integer
    tensors on x's device), each resized to ``size``: the same arithmetic as :func:`resize` of each crop, batched
    (only pixels inside a crop get weight)."""
    out = (torch.arange(size, dtype=x.dtype, device=x.device) + 0.5)[None]

    def weights(start: torch.Tensor, n_in: int) -> torch.Tensor:  # (N, size, n_in)
        scale = side.to(x.dtype) / size
        positions = torch.arange(n_in, dtype=x.dtype, device=x.device) + 0.5
        inside = (positions >= start[:, None]) & (positions < (start + side)[:, None])
        return _triangle(positions - start[:, None, None], out * scale[:, None], scale, inside[:, None])

    rows, cols = weights(top, x.shape[-2]), weights(left, x.shape[-1])
    return rows[:, None] @ x @ cols.transpose(1, 2)[:, None]


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An (H, W, C) float image resized to ``size`` (square side or (height, width)); same arithmetic as the graph."""
    height, width = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (height, width):
        return image
    chw = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return resize(chw, (height, width)).permute(1, 2, 0).contiguous().numpy()
