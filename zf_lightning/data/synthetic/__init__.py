"""Synthetic sequence-classification tasks, generated from a seed: the capacity experiments (index
lookup, nearest neighbour, bounded Dyck, string equality; docs/capacity.md) and the set tasks
(sums, parity, maximum, distinct count, MNIST digit sums; docs/sets.md)."""

from zf_lightning.data.synthetic.base import ClassificationDataModule, ClassificationTask
from zf_lightning.data.synthetic.dyck import BoundedDyck
from zf_lightning.data.synthetic.index_lookup import IndexLookup
from zf_lightning.data.synthetic.mnist_sum import MnistSum, MnistSumDataModule
from zf_lightning.data.synthetic.nearest_neighbor import NearestNeighbor
from zf_lightning.data.synthetic.sets import SetMax, SetParity, SetSum, SetTask, SetUniqueCount
from zf_lightning.data.synthetic.string_equality import StringEquality

__all__ = ["BoundedDyck", "ClassificationDataModule", "ClassificationTask", "IndexLookup", "MnistSum",
           "MnistSumDataModule", "NearestNeighbor", "SetMax", "SetParity", "SetSum", "SetTask", "SetUniqueCount",
           "StringEquality"]
