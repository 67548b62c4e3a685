"""Versatile Diffusion's applications on a multi-flow model (`load_model("vd-shapes")` or any VD checkpoint).

    from versadiff.applications import dual_guided, disentangle, i2t2i, blend
    images = dual_guided(model, "a red circle", image, seeds=range(4), strength=0.5, mixing="attention")
    captions = dual_guided(model, "a red circle", image, seeds=range(4), data="text")      # text + image -> text
    images = disentangle(model, image, seeds=range(4), level=-1)                            # semantic focus
    res = i2t2i(model, image, seeds=range(4), edits={"red": "blue"})                        # res.images, res.prompts
    res = i2t2i(model, image, seeds=range(4), positive="a blue circle", negative="a red circle")
    images = blend(model, range(4), images=[a, b], prompts=["a green square"], image_weights=[1, 0.5])

The same are Pipeline methods (`model.dual_guided(...)`, ...) and `versadiff generate --task dual-guided |
disentangle | i2t2i | blend`. `mixing` documents the three mixing levels and the guidance rule, `disentangle`
the PCA recipe, `figures` the sweep pictures of benchmarks/applications.py.
"""

from versadiff.applications.apps import (
    I2T2IResult,
    blend,
    check_strength,
    disentangle,
    dual_guided,
    edit_latent,
    i2t2i,
    parse_edits,
    substitute_words,
)
from versadiff.applications.disentangle import LEVELS, disentangle_tokens, focus_transform, pca_tokens
from versadiff.applications.figures import save_sweep_figure, sweep_figure
from versadiff.applications.mixing import (
    MIXINGS,
    StepSwitchDenoiser,
    StreamContext,
    deficit_schedule,
    flow_for,
    generate_multi,
)

__all__ = [
    "I2T2IResult",
    "LEVELS",
    "MIXINGS",
    "StepSwitchDenoiser",
    "StreamContext",
    "blend",
    "check_strength",
    "deficit_schedule",
    "disentangle",
    "disentangle_tokens",
    "dual_guided",
    "edit_latent",
    "flow_for",
    "focus_transform",
    "generate_multi",
    "i2t2i",
    "parse_edits",
    "pca_tokens",
    "save_sweep_figure",
    "substitute_words",
    "sweep_figure",
]
