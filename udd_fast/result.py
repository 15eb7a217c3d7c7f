"""A distilled set with what a person wants from it: the set itself, the training set it decodes to,
how the run went, and the artifacts that show it.

The artifacts of a run directory, in the order they are written:
    distilled.pt   the set (stored images, labels, factor, UDD's region boxes), its config and the
                   data's identity (artifacts.save_distilled)
    grid.png       the set drawn (pictures.grid_png)
    curves.png     the run over its outer iterations (pictures.curves_png)
    report.html    one self-contained page: accuracy, timings, pictures, settings (report.report_html)
    summary.json   the numbers, the last artifact: a directory holding it is complete
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifacts import (ArtifactError, check_out_dir, claim_run_dir, load_distilled, mark_complete, save_distilled,
                        write_bytes, write_json, write_text)
from .config import Config
from .decode import training_set


@dataclass
class Result:
    """A distilled set. images [N,C,H,W] in [0,1] and labels [N] on the CPU, class-major; regions =
    (source stored index [M], box [M,4] in stored pixels) of UDD's region views, or None."""
    images: torch.Tensor
    labels: torch.Tensor
    factor: int
    regions: tuple
    info: object  # the data's DatasetInfo (name, class_names, channels, size, mean, std, ...)
    config: Config
    summary: dict = field(default_factory=dict)  # summary.json: settings, timings, accuracy, history
    facts: dict = None  # what identifies the training data (data.data_facts)
    data_dir: str = None  # where the built-in data was read

    @property
    def class_names(self) -> tuple:
        return tuple(self.info.class_names)

    @property
    def history(self) -> dict:
        """{"loss": [[outer, value], ...], "mue": [...], "accuracy": [...]} over the outer iterations."""
        return self.summary.get("history") or {}

    def training_set(self, region_views: bool = None):
        """(images [M,C,H,W] in [0,1], labels [M]): what an evaluation trains on, the formations of every
        stored image plus, with region views (default: the run's setting), UDD's region views."""
        views = self.config.eval.eval_region_views if region_views is None else region_views
        return training_set(self.images, self.labels, self.factor, self.regions if views else None)

    def save(self, out, force: bool = False) -> Path:
        """Write the artifacts into directory `out` (see the module docstring); a directory holding
        another run is refused unless force. Returns the directory."""
        out = Path(out)
        replaced = check_out_dir(out, force)
        claim_run_dir(out, replaced)
        write_set(out, self)
        write_outcome(out, self)
        mark_complete(out)
        return out

    @classmethod
    def load(cls, path) -> "Result":
        """The set of a run directory (or of a distilled.pt), with its summary.json when there is one."""
        from .data import DatasetInfo

        d = load_distilled(path)
        run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
        summary = {}
        if (run_dir / "summary.json").exists():
            try:
                summary = json.loads((run_dir / "summary.json").read_text())
            except (OSError, ValueError) as e:
                raise ArtifactError(f"{run_dir / 'summary.json'} is not readable JSON ({e})") from None
        info = d["dataset_info"]
        info = DatasetInfo(name=d["dataset"], channels=info["channels"], size=info["size"],
                           num_classes=info["num_classes"], mean=tuple(d["mean"]), std=tuple(d["std"]),
                           class_names=tuple(info["class_names"]), size_base=info.get("size_base", info["size"]))
        regions = None if d.get("boxes") is None else (d["region_src"], d["boxes"])
        return cls(d["images"], d["labels"].long(), d["factor"], regions, info, d["config"], summary, d.get("data"),
                   d.get("data_dir"))


def _title(r: Result) -> str:
    c = r.config
    return f"{c.run.method} on {r.info.name}, IPC {c.run.ipc}, factor {r.factor}, preset {c.run.preset}"


def write_set(out: Path, r: Result):
    """distilled.pt and grid.png: written as soon as the set exists, before it is evaluated."""
    from .pictures import grid_png

    save_distilled(out / "distilled.pt", r.images, r.labels, r.factor, r.info, r.config.to_dict(), r.regions,
                   r.facts, r.data_dir)
    write_bytes(out / "grid.png", grid_png(r.images, r.labels, r.factor, r.class_names, regions=r.regions))


def write_outcome(out: Path, r: Result):
    """curves.png, report.html and summary.json (the last artifact)."""
    from .pictures import curves_png
    from .report import report_html

    curves = curves_png(r.history, _title(r))
    write_bytes(out / "curves.png", curves)
    grid = (out / "grid.png").read_bytes()
    write_text(out / "report.html", report_html(r.summary, r.config.to_dict(),
                                                {"grid.png: the distilled set": grid,
                                                 "curves.png: the run": curves}))
    write_json(out / "summary.json", r.summary)
