"""A distilled set with what a person wants from it: the set itself, the training set it decodes to,
how the run went, and the artifacts that show it. `Result.load` is the one reader of a run directory,
`write_run` its one writer (for the pipeline and for `Result.save`).

The artifacts of a run directory, in the order they are written:
    distilled.pt   the set (stored images, labels, factor, UDD's region boxes), its config and the
                   data's identity (artifacts.save_distilled)
    grid.png       the set drawn (pictures.grid_png)
    curves.png     the run over its outer iterations (pictures.curves_png)
    report.html    one self-contained page: accuracy, timings, pictures, settings (report.report_html)
    summary.json   the numbers, the last artifact: a directory holding it is complete
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifacts import (INCOMPLETE, ArtifactError, RunDirLock, check_out_dir, claim_run_dir, load_distilled,
                        read_json_object,
                        mark_complete, save_distilled, write_bytes, write_json, write_text)
from .config import Config
from .decode import RegionViews, training_set

SUMMARY = "a udd_fast summary"  # what a summary.json that is none is refused as
KEPT_ON_RESAVE = ("checkpoint.pt", "log.txt")  # a run's files a Result saved over its own directory keeps


@dataclass
class Result:
    """A distilled set. images [N,C,H,W] in [0,1] and labels [N] on the CPU, class-major; region_views:
    UDD's region views (decode.RegionViews), or None."""
    images: torch.Tensor
    labels: torch.Tensor
    factor: int
    region_views: RegionViews
    info: object  # the data's DatasetInfo (name, class_names, channels, size, mean, std, ...)
    config: Config
    summary: dict = field(default_factory=dict)  # summary.json: settings, timings, accuracy, history
    facts: dict = None  # what identifies the training data (data.data_facts)
    data_dir: str = None  # where the built-in data was read
    incomplete: bool = False  # loaded from a run directory marked INCOMPLETE (a stopped or running run)
    run_dir: str = None  # the run directory it was loaded from (Result.load), else None

    @property
    def class_names(self) -> tuple:
        return tuple(self.info.class_names)

    @property
    def history(self) -> dict:
        """{"loss": [[outer, value], ...], "mue": [...], "accuracy": [...]} over the outer iterations."""
        return self.summary.get("history") or {}

    def uses_region_views(self, with_region_views: bool = None) -> bool:
        """Whether the training set includes UDD's region views: as asked (True needs a set that has
        them), or when None as the run evaluates (its --eval-region-views, where the set has views)."""
        if with_region_views is None:
            return self.region_views is not None and self.config.eval.eval_region_views
        if with_region_views and self.region_views is None:
            raise ValueError("--eval-region-views on: this set has no region boxes (it was not distilled with UDD "
                             "regions)")
        return bool(with_region_views)

    def training_set(self, with_region_views: bool = None, device=None):
        """(images [M,C,H,W] in [0,1], labels [M]): what an evaluation trains on, the formations of every
        stored image plus, where used (uses_region_views), UDD's region views; decoded on `device`
        (default: where the images are). The one place a set's training set is built."""
        views = self.region_views if self.uses_region_views(with_region_views) else None
        return training_set(self.images.to(device), self.labels.to(device), self.factor, views,
                            self.config.match.decode_type or "single")

    def save(self, out, force: bool = False) -> Path:
        """Write the artifacts into directory `out` (see the module docstring); a directory holding
        another run is refused unless force. Saved over the directory it was loaded from, the run's
        checkpoint.pt and log.txt stay (they are not the Result's to replace). Returns the directory."""
        out = Path(out)
        with RunDirLock(out):  # no other process may be writing there meanwhile
            replaced = check_out_dir(out, force)
            if self.run_dir is not None and out.resolve() == Path(self.run_dir).resolve():
                replaced = [name for name in replaced if name not in KEPT_ON_RESAVE]
            claim_run_dir(out, replaced)
            write_run(out, self)
        return out

    @classmethod
    def load(cls, path, allow_incomplete: bool = False) -> "Result":
        """The set of a run directory (or of a distilled.pt), with its summary.json when there is one; every
        field of distilled.pt is checked first (artifacts.load_distilled). The summary comes from the
        directory the set really lies in (a linked distilled.pt brings its own run's). A directory marked
        INCOMPLETE is refused unless allow_incomplete (then `incomplete` says so)."""
        from .data import DatasetInfo

        if Path(path).is_dir() and not (Path(path) / "distilled.pt").exists() and (Path(path) / "summary.json").is_file():
            if read_json_object(Path(path) / "summary.json", SUMMARY).get("method") == "full":
                raise ArtifactError(f"{path} is a full-data reference run (--method full): it stores no set to "
                                    f"evaluate; its accuracy is in {Path(path) / 'summary.json'}")
        d = load_distilled(path)
        given = Path(path) if Path(path).is_dir() else Path(path).parent
        run_dir = (given / "distilled.pt").resolve().parent if Path(path).is_dir() else Path(path).resolve().parent
        incomplete = (run_dir / INCOMPLETE).exists()
        if incomplete and not allow_incomplete:
            raise ArtifactError(f"{incomplete_message(run_dir)}; resume the run (python -m udd_fast.distill --resume "
                                f"{run_dir}) or pass --allow-incomplete")
        summary = {}
        if (run_dir / "summary.json").exists():
            summary = read_json_object(run_dir / "summary.json", SUMMARY)
        info = d["dataset_info"]
        info = DatasetInfo(name=d["dataset"], channels=info["channels"], size=info["size"],
                           num_classes=info["num_classes"], mean=tuple(d["mean"]), std=tuple(d["std"]),
                           class_names=tuple(info["class_names"]), size_base=info.get("size_base", info["size"]))
        views = None if d.get("boxes") is None else RegionViews(d["region_src"], d["boxes"])
        return cls(d["images"], d["labels"].long(), d["factor"], views, info, d["config"], summary, d.get("data"),
                   d.get("data_dir"), incomplete, str(run_dir))


def incomplete_message(run_dir) -> str:
    """What a set in a run directory marked INCOMPLETE may be."""
    return (f"{run_dir} is marked incomplete ({Path(run_dir) / INCOMPLETE}): its run is still going or stopped "
            f"before writing all artifacts, so its distilled.pt may be missing, older than its checkpoint or without "
            f"summary.json")


def _title(r: Result) -> str:
    c = r.config
    return f"{c.run.method} on {r.info.name}, IPC {c.run.ipc}, factor {r.factor}, preset {c.run.preset}"


RUN_PARTS = ("set", "outcome")


def write_reference_run(out: Path, summary: dict, config: dict, class_names):
    """The run directory of --method full (the full-data reference), which stores no set: report.html and
    summary.json (the last artifact), then the INCOMPLETE marker goes."""
    from .report import report_html

    write_text(out / "report.html", report_html(summary, config, {}, class_names))
    write_json(out / "summary.json", summary)
    mark_complete(out)


def write_run(out: Path, r: Result, parts=RUN_PARTS):
    """Write a Result's artifacts into its claimed run directory `out`, the one writer of one:
    "set": distilled.pt and grid.png, as soon as the set exists (before its evaluation, so that they
    survive one that fails); "outcome": curves.png, report.html and summary.json (the last artifact),
    then the INCOMPLETE marker goes."""
    from .pictures import curves_png, grid_png
    from .report import report_html

    unknown = set(parts) - set(RUN_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)} of a run directory; choose from {RUN_PARTS}")
    if "set" in parts:
        save_distilled(out / "distilled.pt", r.images, r.labels, r.factor, r.info, r.config.to_dict(),
                       r.region_views, r.facts, r.data_dir)
        write_bytes(out / "grid.png", grid_png(r.images, r.labels, r.factor, r.class_names,
                                               region_views=r.region_views))
    if "outcome" in parts:
        curves = curves_png(r.history, _title(r), r.summary.get("architectures"))
        write_bytes(out / "curves.png", curves)
        grid = (out / "grid.png").read_bytes()
        write_text(out / "report.html", report_html(r.summary, r.config.to_dict(),
                                                    {"grid.png: the distilled set": grid,
                                                     "curves.png: the run": curves}, r.class_names))
        write_json(out / "summary.json", r.summary)
        mark_complete(out)
