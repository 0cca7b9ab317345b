"""Data: dataset sources -> uint8 image batches (``sources``, ``loader``; ``prepared``: the
store ``ssl-zoo prepare`` writes, registered as ``prepared:``); batched views (``views``)."""

from ssl_zoo.data import prepared  # noqa: F401  (registers the prepared: source)
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import (
    SOURCES,
    DataSplits,
    FolderImages,
    ImageDataset,
    TensorImages,
    open_source,
)

__all__ = ["SOURCES", "BatchLoader", "DataSplits", "FolderImages", "ImageDataset",
           "TensorImages", "open_source"]
