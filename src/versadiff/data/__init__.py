"""Datasets and transforms. Items are dicts {"image": [C,H,W] in [-1,1], "label"?: int, "caption"?: str};
every dataset has num_classes, class_names, channels and resolution, and set_epoch(epoch)."""

from .attributes import conditional_accuracy, predict_class, read_attributes
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
from .registry import DATASETS, build_dataset, dataset_keys
from .shapes import COLORS, SHAPES, SIZES, POSITIONS, ShapesDataset, shape_class_names
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
]
