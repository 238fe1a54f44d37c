"""Data sets, loaders and view pipelines."""

from fastssl.data.datasets import (
    NAMED_DATA,
    CharTokenizer,
    ImageDataset,
    ImageFolderDataset,
    TextDataset,
    cache_dir,
    data_root,
    decode_jpegs,
    load_cifar10,
    load_image_dataset,
    load_image_folder,
    load_mnist,
    load_text,
    load_text_dataset,
    resolve_data,
)
from fastssl.data.views import PRESETS, ViewPipeline, ViewSpec, random_resized_crop, to_device, view_pipeline

__all__ = [
    "NAMED_DATA", "PRESETS", "CharTokenizer", "ImageDataset", "ImageFolderDataset", "TextDataset", "ViewPipeline",
    "ViewSpec", "cache_dir", "data_root", "decode_jpegs", "load_cifar10", "load_image_dataset", "load_image_folder",
    "load_mnist", "load_text", "load_text_dataset", "random_resized_crop", "resolve_data", "to_device",
    "view_pipeline",
]
