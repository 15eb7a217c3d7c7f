"""Where a dataset comes from: one type, one spelling. The spelling is what the run's log and
summary.json show, what distilled.pt and checkpoint.pt store, and what `evaluate` and `--resume` read
back:

    mnist, cifar10, ...       a built-in, by its canonical name
    npz:/abs/path/set.npz     an .npz file of the user's, by its resolved path
    folder:/abs/path/dir      an image folder of the user's, by its resolved path
    arrays, arrays:<name>     images handed over in memory (udd_fast.data.from_arrays)

A user's argument (a built-in's name or alias, a relative or absolute path) becomes a DataSource with
`DataSource.parse`, which also reads the spelling back, and the forms older files hold (a bare
absolute path).
"""
import os
from dataclasses import dataclass
from pathlib import Path

from .dataset import DataError
from .registry import DATASETS, canonical_name

KINDS = ("builtin", "npz", "folder", "arrays")


@dataclass(frozen=True)
class DataSource:
    kind: str  # one of KINDS
    where: str = ""  # the canonical name, the resolved absolute path, or the in-memory data's name ("": none)

    def __str__(self) -> str:
        if self.kind == "builtin":
            return self.where
        return f"{self.kind}:{self.where}" if self.where else self.kind

    @classmethod
    def parse(cls, text) -> "DataSource":
        """A DataSource from its spelling or from a user's argument (paths resolved against the working
        directory). Raises DataError for an unknown name or a path that does not exist."""
        text = str(text)
        kind, sep, rest = text.partition(":")
        if sep and kind in ("npz", "folder") and rest:
            return cls(kind, rest)
        if kind == "arrays" and (sep or text == "arrays"):
            return cls("arrays", rest)
        path = user_data_path(text)
        if path is None:
            return cls("builtin", canonical_name(text))
        return cls("npz" if path.is_file() else "folder", str(path))

    @property
    def path(self) -> Path:
        """User data's path (None for a built-in or data in memory)."""
        return Path(self.where) if self.kind in ("npz", "folder") else None

    @property
    def stem(self) -> str:
        """The dataset's own short name (an output directory's default): a built-in's name, an .npz
        file's stem, a folder's name, or the in-memory data's name."""
        if self.kind == "npz":
            return Path(self.where).stem
        if self.kind == "folder":
            return Path(self.where).name
        return self.where or self.kind

    def check_loadable(self):
        """Data in memory cannot be read again from its name: say so (DataError)."""
        if self.kind == "arrays":
            raise DataError(f"{self} was handed over in memory: pass the images again "
                            f"(udd_fast.data.from_arrays(images, labels, test_images, test_labels))")


def user_data_path(name) -> Path | None:
    """The resolved absolute path of user data, or None for a built-in name. Built-in names win over
    same-named files in the working directory unless given with a separator."""
    text = str(name)
    looks_like_path = os.sep in text or "/" in text or text.lower().endswith(".npz")
    try:
        canonical_name(text)
        if not looks_like_path:
            return None
    except DataError:
        pass
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()  # one name for one dataset, whatever the working directory
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: user data files must be .npz (or pass an image-folder directory)")
        return path.resolve()
    if looks_like_path:
        raise DataError(f"{path}: no such .npz file or directory; pass an existing path or a "
                        f"built-in dataset name ({', '.join(sorted(DATASETS))})")
    canonical_name(text)  # raises the unknown-name error
    return None
