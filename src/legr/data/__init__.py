"""Datasets as in-memory uint8 tensors: registry, cached decoding, splits, batched augmentation, fast loader.

>>> data = load_dataset("cifar10-jpeg")               # names: see available_datasets()
>>> loader = TensorLoader(data.train_x, data.train_y, 128, data.mean, data.std, shuffle=True, augment=True)
"""

from legr.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from legr.data.augment import random_crop_flip
from legr.data.loader import TensorLoader, normalize
from legr.data.registry import (
                                IMAGENET_MEAN,
                                IMAGENET_STD,
                                ImageData,
                                available_datasets,
                                load_dataset,
                                register_dataset,
)
from legr.data.sources import CIFAR10_CLASSES, channel_stats
from legr.data.split import Splits, split_indices, split_train_val

__all__ = [
    "CIFAR10_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "ImageData", "Splits", "TensorLoader", "available_datasets",
    "channel_stats", "load_dataset", "normalize", "random_crop_flip", "register_dataset", "split_indices",
    "split_train_val",
]
