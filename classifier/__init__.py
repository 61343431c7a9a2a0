"""Classifiers of the 40 CelebA-HQ attributes and the CelebA-HQ data layer."""
from classifier.attributes import ATTRIBUTES, NUM_ATTRIBUTES, UnknownAttributeError, attribute_index, attribute_name
from classifier.dataset import CelebHQAttrDataset, read_attribute_file, write_attribute_file

__all__ = ["ATTRIBUTES", "NUM_ATTRIBUTES", "UnknownAttributeError", "attribute_index",
           "attribute_name", "CelebHQAttrDataset", "read_attribute_file", "write_attribute_file"]
