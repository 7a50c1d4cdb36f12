"""Synthetic sequence-classification tasks for the capacity experiments (index lookup, nearest
neighbour, bounded Dyck, string equality), generated from a seed; see docs/capacity.md."""

from zf_lightning.data.synthetic.base import ClassificationDataModule, ClassificationTask
from zf_lightning.data.synthetic.dyck import BoundedDyck
from zf_lightning.data.synthetic.index_lookup import IndexLookup
from zf_lightning.data.synthetic.nearest_neighbor import NearestNeighbor
from zf_lightning.data.synthetic.string_equality import StringEquality

__all__ = ["BoundedDyck", "ClassificationDataModule", "ClassificationTask", "IndexLookup", "NearestNeighbor",
           "StringEquality"]
