"""Other checkpoint formats in and out: the weights users already hold (see versadiff.convert.formats).

    versadiff convert SRC --to versadiff|diffusers --out DIR      (format detected from SRC)

    from versadiff.convert import detect_format, load_foreign, load_foreign_model, write_foreign
    load_foreign_model("nnet_ema.pth")                            # a Pipeline, like versadiff.models.load_model

Families, one module each: vd_files (Versatile Diffusion v0 / v1.0 / diffusers), sd (Stable Diffusion 1.x), uvit
(U-ViT), vq_diffusion (VQ-Diffusion, diffusers VQDiffusionPipeline, taming VQGANs), vdpm (v-diffusion-torch);
diffusers_export writes diffusers folders; vd / ldm_vae / optimus / schedulers hold the key and config mappings.
Importing this package imports no family module (they load on first use).
"""

from versadiff.convert.formats import (
    FORMATS,
    Component,
    Foreign,
    Format,
    KeyReport,
    convert,
    detect_format,
    foreign_format,
    list_formats,
    load_foreign,
    load_foreign_model,
    main,
    read_checkpoint,
    register_format,
    write_foreign,
    write_versadiff,
)

__all__ = [
    "FORMATS",
    "Component",
    "Foreign",
    "Format",
    "KeyReport",
    "convert",
    "detect_format",
    "foreign_format",
    "list_formats",
    "load_foreign",
    "load_foreign_model",
    "main",
    "read_checkpoint",
    "register_format",
    "write_foreign",
    "write_versadiff",
]
