"""Datasets and transforms. Items are dicts {"image": [C,H,W] in [-1,1], "label"?: int, "caption"?: str,
"tags"?: FloatTensor[K]}; every dataset has num_classes, class_names, channels and resolution, and
set_epoch(epoch). Streaming shards (ShardDataset) are iterable; cached latents (LatentDataset) hold
latents in "image". Bad files never stop training: image readers replace and count them (`stats`, see
skips.py), shards skip and count them; a dataset that cannot give one batch raises DataExhaustedError."""

from .attributes import conditional_accuracy, predict_class, read_attributes
from .captions import caption_folder_dataset, coco_captions_dataset, cub_captions_dataset
from .celeba import CELEBA_CROP, celeba_dataset, read_celeba_attributes
from .cifar import CIFARDataset, safe_load_pickle
from .classindex import class_index_dataset, read_class_index
from .digits import DigitsDataset
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    MNISTDataset,
    find_fashion_mnist,
    read_idx,
    require_fashion_mnist,
    write_idx,
)
from .imagelist import ImageListDataset
from .latents import LatentDataset, cache_latents
from .registry import DATASETS, build_dataset, dataset_keys
from .shapes import COLORS, SHAPES, SIZES, POSITIONS, ShapesDataset, shape_class_names
from .shard_writer import ShardFolderError, add_shards_arguments, run_shards, shards_main, write_shards
from .shards import ShardDataset, merge_shard_states, read_manifest
from .skips import CorruptImageError, DataExhaustedError, check_epoch, load_image
from .transforms import ImageTransform, build_transform, item_seed

__all__ = [
    "DATASETS",
    "build_dataset",
    "dataset_keys",
    "ShapesDataset",
    "shape_class_names",
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "ImageFolderDataset",
    "IMAGE_EXTENSIONS",
    "MNISTDataset",
    "read_idx",
    "write_idx",
    "find_fashion_mnist",
    "require_fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "ImageTransform",
    "build_transform",
    "item_seed",
    "read_attributes",
    "predict_class",
    "conditional_accuracy",
    "CIFARDataset",
    "safe_load_pickle",
    "celeba_dataset",
    "read_celeba_attributes",
    "CELEBA_CROP",
    "class_index_dataset",
    "read_class_index",
    "coco_captions_dataset",
    "cub_captions_dataset",
    "caption_folder_dataset",
    "DigitsDataset",
    "ImageListDataset",
    "ShardDataset",
    "merge_shard_states",
    "write_shards",
    "shards_main",
    "add_shards_arguments",
    "run_shards",
    "ShardFolderError",
    "read_manifest",
    "DataExhaustedError",
    "CorruptImageError",
    "check_epoch",
    "load_image",
    "cache_latents",
    "LatentDataset",
]
