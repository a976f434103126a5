"""Data sets, class metadata, reading and checking. Importing this package registers every format."""
from pixelwise.data import formats, synthetic  # noqa: F401  (registration)
from pixelwise.data.base import JointTransform, SegmentationDataset
from pixelwise.data.benchmark_formats import ISBI2012Dataset
from pixelwise.data.checks import DataReport, Problem, check_dataset, print_report
from pixelwise.data.classes import IGNORE_INDEX, ClassInfo, class_info, default_palette
from pixelwise.data.formats import ADE20KDataset, CamVidDataset, CityscapesDataset, FolderDataset, VOCDataset
from pixelwise.data.io import DataError, read_image, read_mask, read_pair
from pixelwise.data.registry import create_dataset, dataset_factory, list_datasets, register_dataset
from pixelwise.data.spec import DataSpec, RecordedData

__all__ = [
    "ADE20KDataset", "CamVidDataset", "CityscapesDataset", "ClassInfo", "DataError", "DataReport", "DataSpec",
    "FolderDataset", "IGNORE_INDEX", "ISBI2012Dataset", "JointTransform", "Problem", "RecordedData", "SegmentationDataset", "VOCDataset",
    "check_dataset", "class_info", "create_dataset", "dataset_factory", "default_palette", "list_datasets",
    "print_report", "read_image", "read_mask", "read_pair", "register_dataset",
]
