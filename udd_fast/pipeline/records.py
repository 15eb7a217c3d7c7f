"""The records a run hands from phase to phase: what it is asked (Request), what prepare made of it
(Run), and what the loop produced (LoopOutcome)."""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..data import DataSource, RealData
from ..decode import RegionViews
from ..distributed import Comm
from ..logs import quiet


class Interrupted(KeyboardInterrupt):
    """A stopped run; the message names the checkpoint and the resume command."""


@dataclass
class Request:
    """What a run is asked to do."""
    dataset: object  # a DataSource, or data in memory (an ArrayDataset from data.from_arrays)
    out: Path  # the run directory
    # flat config settings (udd_fast.config): for a new run the ones given (None: the dataset and the
    # preset decide); for a resumed run all of them (its checkpoint's, with the changes allowed)
    settings: dict
    data_dir: Path = None  # the built-ins' directory (None: $UDD_FAST_DATA, else ~/.cache/udd_fast/data)
    download: bool = True  # fetch missing built-in files
    force: bool = False  # replace another run's files in `out`
    resume: dict = None  # the loaded checkpoint (checkpoint.load_checkpoint) to continue
    progress: bool = True  # progress bars

    @property
    def source(self) -> DataSource:
        """Where the data comes from (data in memory: its own name)."""
        if isinstance(self.dataset, DataSource):
            return self.dataset
        return DataSource.parse(self.dataset.info.name)


@dataclass
class Run:
    """A prepared run: what the phases read and what they hand on."""
    request: Request
    cfg: Config
    data: RealData
    facts: dict  # what identifies the training data (udd_fast.data.data_facts)
    data_dir: Path  # where the built-ins were read (None for user data): saved for evaluate and --resume
    comm: Comm
    replaced: list  # another run's files in `out` that --force replaces
    lock: object = None  # the run directory's RunDirLock (rank 0), released when execute ends
    log: object = quiet  # log(line): stderr and log.txt on rank 0, once execute has claimed the directory
    proxy: torch.nn.Module = None  # UDD's proxy network
    notes: dict = field(default_factory=dict)  # facts for the summary gathered by the phases

    @property
    def out(self) -> Path:
        return self.request.out

    @property
    def progress(self) -> bool:
        return self.request.progress and self.comm.is_main

    @property
    def launcher(self) -> str:
        """The command that starts this run again (a resume names it)."""
        if self.comm.distributed:
            return f"torchrun --nproc_per_node {self.comm.world} -m udd_fast.distill"
        return "python -m udd_fast.distill"


@dataclass
class LoopOutcome:
    """What the loop produced: the set and how it was made."""
    images: torch.Tensor  # stored images in [0, 1]
    labels: torch.Tensor
    region_views: RegionViews  # UDD's region views, or None
    iterations: int  # outer iterations of the run (0: real images, --method random)
    final_loss: float  # the last outer iteration's mean matching loss (None without iterations)
    seconds: float
    loop_seconds: float  # the outer iterations alone, without the short evaluations (None without a loop)
    # {"loss"|"mue"|"accuracy": [[outer, value], ...]}, empty without outer iterations
    history: dict = field(default_factory=lambda: {"loss": [], "mue": [], "accuracy": []})
