"""Data: dataset sources -> uint8 image batches (``sources``, ``loader``); batched views
(``views``)."""

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
