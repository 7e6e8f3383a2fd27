from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class VisionTransformer(nn.Module):
    """A tiny vision transformer (Dosovitskiy et al., 2021): the image, zero-padded to a
    multiple of ``patch_size``, cut into square patches embedded by a strided conv; learned
    position embeddings (and a class token for ``pooling="cls"``); a pre-norm transformer
    encoder; a final layer norm; a linear head on the class token or the patches' mean."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        pooling: Literal["cls", "mean"],
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; expected cls or mean")
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        height, width, channels = input_shape
        pad_height, pad_width = -height % patch_size, -width % patch_size
        # F.pad's order: (left, right, top, bottom) of the last two dims
        self.padding = (0, pad_width, 0, pad_height)
        num_patches = ((height + pad_height) // patch_size) * ((width + pad_width) // patch_size)
        self.pooling = pooling
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        tokens = num_patches + (1 if pooling == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors only serve padded batches of post-norm layers; torch warns otherwise
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT's (timm's) initialisation: small truncated normals, zero biases
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.encoder(self.dropout(tokens + self.pos_embed)))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)
