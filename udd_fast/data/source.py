"""Where a dataset comes from: one type, one spelling. The spelling is what the run's log and
summary.json show, what distilled.pt and checkpoint.pt store, and what `evaluate` and `--resume` read
back:

    mnist, cifar10, ...       a built-in, by its canonical name
    imagenet10@128            a JPEG set (tinyimagenet, imagenet10, imagenet100) at a side other than its
                              default (64, 224, 224)
    imagenet:/abs/classes.txt ImageNet's classes listed in a file of the user's (@N as above)
    npz:/abs/path/set.npz     an .npz file of the user's, by its resolved path
    folder:/abs/path/dir      an image folder of the user's, by its resolved path
    arrays, arrays:<name>     images handed over in memory (udd_fast.data.from_arrays)

A user's argument (a built-in's name or alias, a relative or absolute path) becomes a DataSource with
`DataSource.parse`, which also reads the spelling back, and the forms older files hold (a bare
absolute path).
"""
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .dataset import DataError
from .registry import DATASETS, IMAGENET_ANY, canonical_name

KINDS = ("builtin", "imagenet", "npz", "folder", "arrays")
# the sides a JPEG set may be decoded at (IDC's 224 and below; 16 keeps four 2x poolings meaningful)
SIZE_RANGE = (16, 512)


@dataclass(frozen=True)
class DataSource:
    kind: str  # one of KINDS
    where: str = ""  # the canonical name, the resolved absolute path, or the in-memory data's name ("": none)
    size: int = 0  # a JPEG set's side, 0 for its default (the other data have their own)

    def __str__(self) -> str:
        at = f"@{self.size}" if self.size else ""
        if self.kind == "builtin":
            return self.where + at
        return (f"{self.kind}:{self.where}" if self.where else self.kind) + at

    @property
    def decoded(self) -> bool:
        """A JPEG set, decoded into the image cache at a chosen side."""
        return self.kind == "imagenet" or (self.kind == "builtin" and DATASETS[self.where].get("decoded", False))

    def default_size(self) -> int:
        return (IMAGENET_ANY if self.kind == "imagenet" else DATASETS[self.where])["size"]

    def with_options(self, size=None, classes=None) -> "DataSource":
        """This source with --size and --classes applied (None: not given). Raises DataError where they do not
        apply: --size to data of a fixed side, --classes to anything but `imagenet`."""
        out = self
        if classes is not None:
            if self.kind != "imagenet":
                raise DataError(f"--classes lists ImageNet classes for --dataset imagenet, not for {self} (IDC's "
                                f"subsets have their lists; other data are read by their files)")
            out = replace(out, where=str(Path(classes).expanduser().absolute()))
            if not Path(out.where).is_file():
                raise DataError(f"--classes {classes}: no such file (one ImageNet wnid per line)")
        if size is not None:
            if not out.decoded:
                raise DataError(f"--size applies to the JPEG sets (tinyimagenet, imagenet10, imagenet100, imagenet), "
                                f"which are decoded at a chosen side; {self} is read at its own side")
            if not SIZE_RANGE[0] <= int(size) <= SIZE_RANGE[1]:
                raise DataError(f"--size {size}: must be in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}] pixels")
            out = replace(out, size=0 if int(size) == out.default_size() else int(size))
        return out

    @classmethod
    def parse(cls, text) -> "DataSource":
        """A DataSource from its spelling or from a user's argument (paths resolved against the working
        directory). Raises DataError for an unknown name or a path that does not exist."""
        text = str(text)
        at = re.fullmatch(r"(.+)@(\d+)", text)
        if at:  # a JPEG set's side
            base = cls.parse(at.group(1))
            if base.decoded:
                return base.with_options(size=int(at.group(2)))
        kind, sep, rest = text.partition(":")
        if kind.lower() == "imagenet" and (rest or not sep):  # ImageNet by a class list (--classes FILE)
            return cls("imagenet", rest)
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
        return Path(self.where) if self.kind in ("npz", "folder", "imagenet") and self.where else None

    @property
    def stem(self) -> str:
        """The dataset's own short name (an output directory's default): a built-in's name, an .npz
        file's stem, a folder's name, or the in-memory data's name."""
        if self.kind == "npz":
            return Path(self.where).stem
        if self.kind == "folder":
            return Path(self.where).name
        if self.kind == "imagenet":
            return "imagenet-" + Path(self.where).stem + (f"-{self.size}" if self.size else "")
        return (self.where or self.kind) + (f"-{self.size}" if self.size else "")

    def check_loadable(self):
        """Data in memory cannot be read again from its name, ImageNet not without its class list: say so
        (DataError)."""
        if self.kind == "imagenet" and not self.where:
            raise DataError("--dataset imagenet needs --classes FILE (one wnid per line), or one of IDC's subsets: "
                            "--dataset imagenet10 or imagenet100")
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
