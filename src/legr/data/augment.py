"""Batched, vectorized data augmentation on tensors (CPU or GPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Per image: zero-pad by ``padding``, crop a random window of the original (H, W), flip left-right with p=0.5.

    ``x`` is an (N, C, H, W) batch of any dtype on any device (same dtype/device out). Random numbers come from
    ``generator`` (on its device; CPU by default), so a seeded generator reproduces the batch exactly. This is
    torchvision's ``RandomCrop(H, padding) + RandomHorizontalFlip()`` applied to every image, in one gather.
    """
    n, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=gen_device).to(x.device)
    if flip:
        flips = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
    padded = F.pad(x, (padding,) * 4) if padding else x
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H) row of the padded image for each output row
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    if flip:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)
