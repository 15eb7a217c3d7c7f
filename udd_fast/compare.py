"""`python -m udd_fast.compare DIR...`: one self-contained page (compare.html) and a bar chart (compare.png) of
several evaluated sets: accuracy per set and evaluation network, mean +- std, beside the reference points the
directories include (--method random, herding, kcenter at the set's IPC; --method full), with DD-Ranking's
scores where a set's random selection and full-data reference are among them (udd_fast/scores.py).

A DIR is a udd_fast run directory (its summary.json, plus any eval_<arch>.json that `evaluate` wrote there) or
the --out directory `evaluate` wrote another tool's set's eval_<arch>.json into. Everything is read and checked
before anything is written; the page and the picture replace earlier ones only with --force.
"""
import argparse
import base64
import html
import io
import math
import sys
from pathlib import Path

from .artifacts import INCOMPLETE, ArtifactError, read_json_object, write_bytes, write_text
from .fields import is_number
from .scores import WEIGHT, scores

REFERENCES = ("random", "herding", "kcenter", "full")  # what a distilled set is measured against
OUT_FILES = ("compare.html", "compare.png")


def _read_json(path: Path) -> dict:
    return read_json_object(path, "a udd_fast summary or evaluation")


def _accuracies(res: dict, where: str) -> dict:
    """{mean, std, runs, epochs} of one network's evaluation, every number checked."""
    runs = res.get("accuracy_runs")
    if not (isinstance(runs, list) and runs and all(is_number(a) and 0 <= a <= 100 for a in runs)):
        raise ArtifactError(f"{where}: accuracy_runs {runs!r} is not a list of accuracies in [0, 100]")
    epochs = res.get("epochs")
    return {"mean": sum(runs) / len(runs), "std": res.get("accuracy_std") if is_number(res.get("accuracy_std"))
            else 0.0, "runs": [float(a) for a in runs], "epochs": epochs if is_number(epochs) else None}


def read_entry(path) -> dict:
    """One compared set: {name, path, dataset, ipc, method, archs: {arch: accuracies}} from a run directory's
    summary.json and the eval_<arch>.json beside it (those add networks; the run's own come first)."""
    d = Path(path)
    if not d.is_dir():
        raise ArtifactError(f"{path}: not a directory (give a udd_fast run directory or evaluate's --out directory)")
    if (d / INCOMPLETE).exists():
        raise ArtifactError(f"{path} is marked incomplete ({d / INCOMPLETE}): its run is still going or stopped; "
                            f"compare it once it has finished")
    entry = {"name": d.resolve().name, "path": str(path), "archs": {}, "soft": {}}
    if (d / "summary.json").exists():
        s = _read_json(d / "summary.json")
        entry.update(dataset=s.get("dataset"), ipc=s.get("ipc"), method=s.get("method"))
        archs = s.get("architectures") or ({(s.get("eval") or {}).get("arch"): s} if s.get("accuracy_runs") else {})
        for arch, res in archs.items():
            entry["archs"][str(arch)] = _accuracies(res, f"{d / 'summary.json'} ({arch})")
    for f in sorted(d.glob("eval_*.json")):
        res = _read_json(f)
        arch, soft = res.get("arch"), res.get("labels") == "soft"
        if not isinstance(arch, str) or f.name != f"eval_{arch}{'_soft' if soft else ''}.json":
            raise ArtifactError(f"{f}: not an evaluation written by udd_fast.evaluate (its arch is {arch!r}, its "
                                f"labels {res.get('labels')!r})")
        for key in ("dataset", "ipc", "method"):
            if entry.get(key) is None:
                entry[key] = res.get(key)
        (entry["soft"] if soft else entry["archs"]).setdefault(arch, _accuracies(res, str(f)))
    if not entry["archs"]:  # soft-label accuracies alone score nothing: HLR needs the hard ones
        raise ArtifactError(f"{path} holds no evaluation with hard labels: neither a summary.json with accuracies (a run with "
                            f"--eval-runs 0 has none) nor an eval_<arch>.json (python -m udd_fast.evaluate ... --out "
                            f"{path})")
    if not isinstance(entry.get("dataset"), str) or entry.get("method") is None:
        raise ArtifactError(f"{path}: its evaluation does not say which dataset and method it is (written by an "
                            f"older udd_fast): evaluate it again")
    if entry["method"] != "full" and not (isinstance(entry.get("ipc"), int) and entry["ipc"] >= 1):
        raise ArtifactError(f"{path}: its IPC {entry.get('ipc')!r} is not a count of images per class")
    return entry


def read_entries(paths) -> list:
    """Every DIR's entry, in the order given; a name given twice gets its position beside it."""
    if len({Path(p).resolve() for p in paths}) != len(paths):
        raise ArtifactError("a directory is given twice")
    entries = [read_entry(p) for p in paths]
    names = [e["name"] for e in entries]
    for i, e in enumerate(entries):
        if names.count(e["name"]) > 1:
            e["name"] = f"{e['name']} (#{i + 1})"
    return entries


def score_table(entries, weight: float = WEIGHT) -> list:
    """[(entry, arch, random entry or None, full entry or None, scores)] for every set that is not itself
    random or full, per network that a reference shares: the first random run of its dataset and IPC, the
    first full-data run of its dataset; a second row with soft labels where the set and its random selection
    were both evaluated with them (evaluate --soft-labels)."""
    rows = []
    for e in entries:
        if e["method"] in ("random", "full"):
            continue
        for arch, acc in e["archs"].items():
            rand = next((r for r in entries if r["method"] == "random" and r["dataset"] == e["dataset"]
                         and r["ipc"] == e["ipc"] and arch in r["archs"]), None)
            full = next((r for r in entries if r["method"] == "full" and r["dataset"] == e["dataset"]
                         and arch in r["archs"]), None)
            if rand is None and full is None:
                continue
            full_runs = full and full["archs"][arch]["runs"]
            rows.append((e, arch, rand, full, scores(acc["runs"], rand and rand["archs"][arch]["runs"], full_runs,
                                                     weight)))
            if rand is not None and arch in e["soft"] and arch in rand["soft"]:
                rows.append((e, arch, rand, full, scores(acc["runs"], None, full_runs, weight,
                                                         soft=(e["soft"][arch]["runs"], rand["soft"][arch]["runs"]))))
    return rows


def bar_chart_png(entries) -> bytes:
    """compare.png: per dataset a panel, a group of bars per set (one per network, its mean accuracy with the std
    as an error bar), the full-data reference drawn as a dashed line per network."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(e["dataset"] for e in entries))
    archs = list(dict.fromkeys(a for e in entries for a in e["archs"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6.0, 1.2 * len(entries) + 3), 3.6 * len(datasets)),
                             squeeze=False)
    width = 0.8 / len(archs)
    for ax, ds in zip(axes[:, 0], datasets):
        bars = [e for e in entries if e["dataset"] == ds and e["method"] != "full"]
        for j, arch in enumerate(archs):
            xs = [i + (j - (len(archs) - 1) / 2) * width for i, e in enumerate(bars) if arch in e["archs"]]
            accs = [e["archs"][arch] for e in bars if arch in e["archs"]]
            if accs:
                ax.bar(xs, [a["mean"] for a in accs], width, yerr=[a["std"] for a in accs], capsize=3,
                       color=colours[j % len(colours)], label=arch)
            for full in (e for e in entries if e["dataset"] == ds and e["method"] == "full" and arch in e["archs"]):
                ax.axhline(full["archs"][arch]["mean"], color=colours[j % len(colours)], linestyle="--", linewidth=1,
                           label=f"{arch}: full data")
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([f"{e['name']}\n{e['method']}, IPC {e['ipc']}" for e in bars], fontsize=7)
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{ds}: mean over evaluation runs, std as error bar", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _e(v) -> str:
    return html.escape(str(v))


def _pm(mean, std, digits=2) -> str:
    return "-" if mean is None or (isinstance(mean, float) and math.isnan(mean)) else \
        f"{mean:.{digits}f} &plusmn; {std:.{digits}f}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; } img { max-width: 100%; border: 1px solid #eee; }
"""


def compare_html(entries, rows, png: bytes, weight: float = WEIGHT) -> str:
    """The page: the accuracy table per dataset, the scores, the chart, where each number came from."""
    archs = list(dict.fromkeys(a for e in entries for a in e["archs"]))
    parts = []
    for ds in dict.fromkeys(e["dataset"] for e in entries):
        head = "".join(f"<th>{_e(a)} %</th>" for a in archs)
        body = ""
        for e in (e for e in entries if e["dataset"] == ds):
            cells = "".join(
                f"<td class='num'>{_pm(e['archs'][a]['mean'], e['archs'][a]['std'])}"
                f"<br><span class='muted'>{len(e['archs'][a]['runs'])} runs, {_e(e['archs'][a]['epochs'])} ep</span></td>"
                if a in e["archs"] else "<td>-</td>" for a in archs)
            kind = "reference" if e["method"] in REFERENCES else "set"
            ipc = "all" if e["method"] == "full" else e["ipc"]
            body += f"<tr><td>{_e(e['name'])}</td><td>{_e(e['method'])} ({kind})</td><td class='num'>{_e(ipc)}</td>{cells}</tr>"
        parts.append(f"<h2>{_e(ds)}</h2><table><tr><th>set</th><th>method</th><th>IPC</th>{head}</tr>{body}</table>")
    if rows:
        body = "".join(
            f"<tr><td>{_e(e['name'])}</td><td>{_e(arch)}</td><td>{_e(s['labels'])}</td>"
            f"<td>{_e(rand['name'] if rand else '-')}</td>"
            f"<td>{_e(full['name'] if full else '-')}</td>"
            + "".join(f"<td class='num'>{_pm(s[k]['mean'], s[k]['std']) if k in s else '-'}</td>"
                      for k in ("ior", "hlr", "recovered", "lrs"))
            + f"<td class='num'>{s['paired_runs']}</td></tr>" for e, arch, rand, full, s in rows)
        scores_part = (f"<h2>DD-Ranking's scores</h2><table><tr><th>set</th><th>network</th><th>labels</th>"
                       f"<th>random</th><th>full data</th><th>IOR: gain over random (points)</th>"
                       f"<th>HLR: gap to full data (points)</th><th>recovered share %</th><th>LRS %</th>"
                       f"<th>paired runs</th></tr>{body}</table>"
                       f"<p class='muted'>Per evaluation run r (the set's run r with each reference's run r), mean "
                       f"&plusmn; std over runs. IOR = Acc(set) &minus; Acc(random, same IPC); HLR = Acc(full) "
                       f"&minus; Acc(set); recovered share = Acc(set) / Acc(full); LRS = (e<sup>&alpha;</sup> &minus; "
                       f"e<sup>&minus;1</sup>) / (e &minus; e<sup>&minus;1</sup>), &alpha; = {weight}&middot;IOR "
                       f"&minus; {1 - weight:g}&middot;HLR with accuracies as fractions: DD-Ranking's label-robust "
                       f"score (NUS-HPC-AI-Lab/DD-Ranking; udd_fast's docs/scores.md). With soft labels, IOR "
                       f"compares the set's and the random selection's accuracies trained on a teacher's soft labels "
                       f"(<code>evaluate --soft-labels</code>); HLR and the recovered share stay hard.</p>")
    else:
        scores_part = ("<h2>DD-Ranking's scores</h2><p>None: give a set's <code>--method random</code> run at its IPC "
                       "and a <code>--method full</code> run of its dataset among the directories.</p>")
    sources = "".join(f"<tr><td>{_e(e['name'])}</td><td>{_e(e['path'])}</td></tr>" for e in entries)
    img = f"<img alt='compare.png' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>udd_fast: comparison of "
            f"{len(entries)} sets</title><style>{_CSS}</style></head><body><h1>udd_fast: comparison of {len(entries)} "
            f"sets</h1><p class='muted'>Last-epoch test accuracy, mean &plusmn; std over each evaluation's runs, every "
            f"set trained with IDC's protocol for its network.</p>{''.join(parts)}{scores_part}"
            f"<h2>compare.png</h2>{img}<h2>Sources</h2><table><tr><th>set</th><th>directory</th></tr>{sources}"
            f"</table></body></html>\n")


def _parser():
    p = argparse.ArgumentParser(prog="python -m udd_fast.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="udd_fast run directories, or evaluate's --out directories")
    p.add_argument("--out", default="comparison", help="where compare.html and compare.png go (default ./comparison)")
    p.add_argument("--force", action="store_true", help="replace the compare.html and compare.png already in --out")
    p.add_argument("--lrs-weight", type=float, default=WEIGHT,
                   help=f"DD-Ranking's w in alpha = w IOR - (1 - w) HLR (default {WEIGHT}, its leaderboard's)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    out = Path(args.out)
    try:
        if not (0.0 <= args.lrs_weight <= 1.0):
            raise ArtifactError(f"--lrs-weight {args.lrs_weight}: must lie in [0, 1]")
        entries = read_entries(args.dirs)
        if out.exists() and not out.is_dir():
            raise ArtifactError(f"--out {out} is a file, not a directory")
        there = [name for name in OUT_FILES if (out / name).exists()]
        if there and not args.force:
            raise ArtifactError(f"--out {out} already holds {', '.join(there)}: choose another --out, or replace "
                                f"them with --force")
        rows = score_table(entries, args.lrs_weight)
        png = bar_chart_png(entries)
        page = compare_html(entries, rows, png, args.lrs_weight)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(out / "compare.png", png)
        write_text(out / "compare.html", page)
    except (ArtifactError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for e, arch, rand, full, s in rows:
        got = ", ".join(f"{k} {s[k]['mean']:.2f}" for k in ("ior", "hlr", "recovered", "lrs") if k in s)
        print(f"{e['name']} ({arch}, {s['labels']} labels): {got}", file=sys.stderr)
    print(f"wrote {out / 'compare.html'} and {out / 'compare.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
