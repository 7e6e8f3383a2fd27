from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder whose code also feeds a classifier head.

    Encoder: conv blocks (3x3 conv, batch norm, ReLU; stride 2 while the map is at least 2x2),
    then a linear layer to the code. Decoder: a linear layer back to the last feature map, then
    upsampling and 3x3 convs mirroring the encoder to exactly the input's (C, H, W). Training
    (:meth:`training_loss`) adds the reconstruction error to the classification loss, optionally
    reconstructing clean images from noised ones (denoising) and with an L1 penalty on the code
    (sparse). Inputs are standardised images, so the decoder's output is unbounded (no sigmoid).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: Sequence[int],
        code_size: int,
        dropout: float,
        reconstruction_weight: float,
        denoising: bool,
        noise_std: float,
        sparse: bool,
        sparsity_weight: float,
    ) -> None:
        super().__init__()
        height, width, channels_in = input_shape
        self.input_shape = (channels_in, height, width)
        self.reconstruction_weight = reconstruction_weight
        self.denoising = denoising
        self.noise_std = noise_std
        self.sparse = sparse
        self.sparsity_weight = sparsity_weight

        sizes = [(height, width)]  # the map's size before each encoder block, then after
        widths = [channels_in, *channels]
        encoder: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            stride = 2 if height >= 2 and width >= 2 else 1
            if stride == 2:
                # a 3x3 conv with padding 1 and stride 2 gives ceil(n / 2)
                height, width = (height + 1) // 2, (width + 1) // 2
            encoder += [
                nn.Conv2d(width_in, width_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width_out),
                nn.ReLU(),
            ]
            sizes.append((height, width))
        self.feature_shape = (widths[-1], height, width)
        features = widths[-1] * height * width
        encoder += [nn.Flatten(), nn.Linear(features, code_size)]
        self.encoder = nn.Sequential(*encoder)

        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(code_size, num_classes))

        self.decoder_input = nn.Sequential(nn.Linear(code_size, features), nn.ReLU())
        decoder: list[nn.Module] = []
        for step in range(len(channels), 0, -1):
            width_in, width_out = widths[step], widths[step - 1]
            decoder += [
                # exact sizes, so odd sides (3x5, 1x1) come back as they went in
                nn.Upsample(size=sizes[step - 1], mode="nearest"),
                nn.Conv2d(width_in, width_out, 3, padding=1, bias=step == 1),
            ]
            if step > 1:  # the last conv gives the standardised image itself
                decoder += [nn.BatchNorm2d(width_out), nn.ReLU()]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        features = self.decoder_input(code).view(code.shape[0], *self.feature_shape)
        return self.decoder(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's image of ``x`` (same shape); denoises when ``x`` itself is noisy."""
        return self.decode(self.encode(x))

    def training_loss(
        self, x: torch.Tensor, labels: torch.Tensor, criterion: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification loss + weighted reconstruction error (+ L1 on the code when sparse),
        and the batch's logits."""
        noisy = x
        if self.denoising and self.training and self.noise_std > 0:
            noisy = x + self.noise_std * torch.randn_like(x)
        code = self.encode(noisy)
        logits = self.head(code)
        loss = criterion(logits, labels)
        loss = loss + self.reconstruction_weight * F.mse_loss(self.decode(code), x)
        if self.sparse:
            loss = loss + self.sparsity_weight * code.abs().mean()
        return loss, logits
