"""The executor: running the heavy passes on a Dask distributed cluster (what runs is the
callers': virtual images here, the models' pass in :mod:`napari_4dstem_ml.predict.distributed`).

``Compute`` says where work runs: in this process (the default), on a ``LocalCluster`` of
``workers`` processes, or on an existing scheduler (``scheduler="tcp://host:port"``).
:func:`open_client` connects (an unreachable scheduler fails within seconds with
:class:`SchedulerUnreachable`). Workers open the file themselves (:class:`DataSpec`: EMPAD and
``.npy`` memory-mapped by byte offset, HDF5 through h5py chunk by chunk, Zarr/Dask natively),
so no pattern passes through the client; the masks and the model are broadcast once.
:mod:`.jobs` holds the generators (progress events per finished block; closing one cancels
its tasks), :mod:`.sink` the incremental writers of the result images.
"""

from .cluster import ClusterError, Compute, ParallelError, SchedulerUnreachable, open_client
from .data import DataSpec
from .jobs import BlockEvent, find_centre, iter_virtual_image, subsample_mean_pattern

__all__ = [
    "BlockEvent",
    "ClusterError",
    "Compute",
    "DataSpec",
    "ParallelError",
    "SchedulerUnreachable",
    "find_centre",
    "iter_virtual_image",
    "open_client",
    "subsample_mean_pattern",
]
