"""Datasets as in-memory uint8 tensors, or image folders streamed from disk (`ImageFiles`): registry, cached
decoding, splits, batched augmentation, loaders.

>>> data = load_dataset("cifar10-jpeg")               # names: see available_datasets()
>>> loader = make_loader(data.train_x, data.train_y, 128, data.mean, data.std, shuffle=True, augment=True)
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
from legr.data.stream import ImageFiles, Loader, StreamLoader, in_memory, make_loader

__all__ = [
    "CIFAR10_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "ImageData", "ImageFiles", "Loader", "Splits",
    "StreamLoader", "TensorLoader", "available_datasets", "channel_stats", "in_memory", "load_dataset", "make_loader",
    "normalize", "random_crop_flip", "register_dataset", "split_indices", "split_train_val",
]
