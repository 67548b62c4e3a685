"""Autoencoder training losses: pixel reconstruction + regulariser + optional patch discriminator.

LDM / taming train with L1 + LPIPS + a PatchGAN. LPIPS needs downloaded VGG weights, which this package never
fetches, so the perceptual term is absent here: the reconstruction is L1 or L2 only, and the optional
discriminator (pix2pix PatchGAN, hinge loss, adaptive weight of Esser et al. 2021 eq. 7) supplies sharpness.
Losses are per sample, summed over pixels as LDM does (so the KL weight 1e-6 of kl-f8 keeps its meaning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchDiscriminator", "AutoencoderLoss"]


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: 4x4 stride-2 convolutions with LeakyReLU(0.2); one real/fake logit per patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            # GroupNorm instead of BatchNorm: per-sample losses must not depend on the rest of the batch
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AutoencoderLoss(nn.Module):
    """Generator and discriminator objectives for KL / VQ autoencoders.

    rec: "l1" or "l2". reg_weight: weight of the regulariser passed in (KL sum: 1e-6 for kl-f8; VQ codebook
    loss: 1.0). disc_weight: 0 disables the discriminator; it switches on at step disc_start.
    adaptive: scale the GAN term by |grad rec| / |grad gan| at the decoder's last layer (VQGAN eq. 7).
    """

    def __init__(
        self,
        rec: str = "l1",
        reg_weight: float = 1e-6,
        disc_weight: float = 0.0,
        disc_start: int = 0,
        adaptive: bool = True,
        in_channels: int = 3,
        disc_channels: int = 64,
        disc_layers: int = 3,
    ) -> None:
        super().__init__()
        if rec not in ("l1", "l2"):
            raise ValueError(f"rec must be 'l1' or 'l2' (LPIPS is unavailable offline), got {rec!r}")
        if reg_weight < 0 or disc_weight < 0:
            raise ValueError("reg_weight and disc_weight must be >= 0")
        self.rec, self.reg_weight, self.disc_weight = rec, float(reg_weight), float(disc_weight)
        self.disc_start, self.adaptive = int(disc_start), bool(adaptive)
        self.discriminator = PatchDiscriminator(in_channels, disc_channels, disc_layers) if disc_weight > 0 else None

    def _rec(self, x: Tensor, recon: Tensor) -> Tensor:
        d = (x - recon).abs() if self.rec == "l1" else (x - recon) ** 2
        return d.flatten(1).sum(dim=1)

    def _gan_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def generator_losses(self, x: Tensor, recon: Tensor, reg: Tensor, step: int = 0, last_layer: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample {"loss", "rec", "reg", "gan"}; reg is the per-sample KL sum or codebook loss."""
        rec = self._rec(x, recon)
        loss = rec + self.reg_weight * reg
        gan = torch.zeros_like(rec)
        if self._gan_on(step):
            gan = -self.discriminator(recon).flatten(1).mean(dim=1)
            w = torch.tensor(self.disc_weight, device=x.device)
            if self.adaptive and last_layer is not None and torch.is_grad_enabled():
                g_rec = torch.autograd.grad(rec.mean(), last_layer, retain_graph=True)[0]
                g_gan = torch.autograd.grad(gan.mean(), last_layer, retain_graph=True)[0]
                w = w * (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()
            loss = loss + w * gan
        return {"loss": loss, "rec": rec.detach(), "reg": reg.detach(), "gan": gan.detach()}

    def discriminator_losses(self, x: Tensor, recon: Tensor, step: int = 0) -> Tensor:
        """Per-sample hinge loss of the discriminator (zeros before disc_start or without a discriminator)."""
        if not self._gan_on(step):
            return torch.zeros(x.shape[0], device=x.device)
        real = self.discriminator(x.detach()).flatten(1)
        fake = self.discriminator(recon.detach()).flatten(1)
        return 0.5 * (F.relu(1.0 - real).mean(dim=1) + F.relu(1.0 + fake).mean(dim=1))
