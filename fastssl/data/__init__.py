"""Datasets, loaders and view pipelines."""

from fastssl.data.views import PRESETS, ViewPipeline, ViewSpec, random_resized_crop, to_device, view_pipeline

__all__ = ["PRESETS", "ViewPipeline", "ViewSpec", "random_resized_crop", "to_device", "view_pipeline"]
