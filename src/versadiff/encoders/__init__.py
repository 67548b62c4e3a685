"""Context encoders (CLIP text / image for Versatile Diffusion) and the tokenizers of VD's text models.

Importing this package registers "clip_text" and "clip_image" in ENCODERS; transformers is imported only when
an encoder or tokenizer is built.
"""

from versadiff.encoders.base import ENCODERS, ContextEncoder, build_encoder
from versadiff.encoders.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipImageEncoder,
    ClipImageEncoderConfig,
    ClipPair,
    ClipPairConfig,
    ClipTextEncoder,
    ClipTextEncoderConfig,
    load_clip_tower,
    preprocess_clip_images,
)
from versadiff.encoders.tokenizers import (
    SHIPPED_TOKENIZERS,
    ClipTokenizer,
    OptimusBertTokenizer,
    OptimusGPT2Tokenizer,
    load_bert_tokenizer,
    load_clip_tokenizer,
    load_gpt2_tokenizer,
    shapes_caption_corpus,
    tokenizer_folder,
)

__all__ = [
    "ContextEncoder",
    "ENCODERS",
    "build_encoder",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipTextEncoderConfig",
    "ClipImageEncoderConfig",
    "ClipTextEncoder",
    "ClipImageEncoder",
    "ClipPairConfig",
    "ClipPair",
    "load_clip_tower",
    "preprocess_clip_images",
    "SHIPPED_TOKENIZERS",
    "ClipTokenizer",
    "OptimusBertTokenizer",
    "OptimusGPT2Tokenizer",
    "load_clip_tokenizer",
    "load_bert_tokenizer",
    "load_gpt2_tokenizer",
    "shapes_caption_corpus",
    "tokenizer_folder",
]
