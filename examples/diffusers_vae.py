"""Use a diffusers AutoencoderKL folder (e.g. `stabilityai/sd-vae-ft-mse` downloaded, or `<model>/vae`) in versadiff.

    python examples/diffusers_vae.py --vae path/to/vae_folder --image photo.png --out outputs/vae

The folder (config.json + diffusion_pytorch_model.safetensors, as diffusers' save_pretrained writes it) loads
into versadiff's AutoencoderKL without renaming anything; the image is encoded to diffusion latents
((z - shift) * scale_factor), decoded back, and the reconstruction is saved next to the input with its PSNR.
The same folder can be a latent run's autoencoder: `--set autoencoder.path=path/to/vae_folder`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from versadiff.autoencoders import AutoencoderKL
from versadiff.images import save_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", required=True, help="a diffusers AutoencoderKL folder")
    p.add_argument("--image", help="an RGB image (default: a generated test pattern)")
    p.add_argument("--size", type=int, default=64, help="resize the image to SIZE x SIZE")
    p.add_argument("--out", default="outputs/vae")
    args = p.parse_args()

    vae = AutoencoderKL.from_diffusers(args.vae).eval()
    if args.image:
        pil = Image.open(args.image).convert("RGB").resize((args.size, args.size))
        x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    else:  # a smooth colour pattern
        u = torch.linspace(-1, 1, args.size)
        x = torch.stack([u[None].expand(args.size, -1), u[:, None].expand(-1, args.size),
                         (u[None] * u[:, None])])[None]
    with torch.no_grad():
        z = vae.encode_latents(x, sample=False)
        recon = vae.decode_latents(z).clamp(-1, 1)
    mse = float(((recon - x) / 2).pow(2).mean())
    psnr = 10 * np.log10(1 / max(mse, 1e-12))
    grid = save_grid(torch.cat([x, recon]), Path(args.out) / "reconstruction.png", nrow=2,
                     labels=["input", f"decoded ({psnr:.1f} dB)"])
    print(f"latents {tuple(z.shape)} (scale {vae.config.scale_factor}); PSNR {psnr:.2f} dB; wrote {grid}")


if __name__ == "__main__":
    main()
