"""torch.distributed.checkpoint (DCP) integration: save and load sharded checkpoints as
tensorvcs commits, and convert between commits, DCP directories and consolidated files.

::

    import torch.distributed.checkpoint as dcp
    import tensorvcs as tv

    repo = tv.Repo.open("run")                      # on every rank
    dcp.save(state, storage_writer=tv.dcp.StorageWriter(repo, branch="main", step=step))
    dcp.load(state, storage_reader=tv.dcp.StorageReader(repo, "main"))   # any world size

See docs/distributed.md.
"""

from .convert import (
    export_dcp,
    export_torch_save,
    import_dcp,
    import_torch_save,
    load_state,
    write_torch_save,
)
from .reader import StorageReader, load
from .writer import SaveStats, StorageWriter, StoredItem

__all__ = [
    "SaveStats",
    "StorageReader",
    "StorageWriter",
    "StoredItem",
    "export_dcp",
    "export_torch_save",
    "import_dcp",
    "import_torch_save",
    "load",
    "load_state",
    "write_torch_save",
]
