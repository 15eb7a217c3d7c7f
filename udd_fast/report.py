"""`report.html`: one self-contained page of a run (pictures embedded as data URIs, no script, no
external resource), so it opens anywhere and can be mailed: the result first (accuracy per run,
mean and std, with and without UDD's region views), then timings, UDD facts, the pictures and
every setting."""
import base64
import html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.big { font-size: 1.6em; font-weight: 600; } .muted { color: #777; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _e(v) -> str:
    return html.escape(str(v))


def _num(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(head, rows) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if isinstance(c, (int, float)) or
                                     (isinstance(c, str) and c[:1].isdigit()) else f"<td>{_e(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _accuracy(summary) -> str:
    runs, best = summary.get("accuracy_runs") or [], summary.get("best_runs") or []
    if not runs:
        return "<p>Not evaluated (<code>--eval-runs 0</code>).</p>"
    std = summary.get("accuracy_std") or 0.0
    out = [f'<p class="big">{_num(summary["accuracy_mean"])} &plusmn; {_num(std)} %</p>',
           f'<p class="muted">last-epoch test accuracy, mean &plusmn; std over {len(runs)} evaluation runs'
           f'{" (with region views)" if (summary.get("eval") or {}).get("region_views") else ""}; '
           f'best of the validations: {_num(summary.get("best_mean"))} %</p>']
    rows = [(i + 1, _num(a), _num(best[i]) if i < len(best) else "-") for i, a in enumerate(runs)]
    out.append(_table(["run", "last epoch %", "best validation %"], rows))
    archs = summary.get("architectures") or {}
    if len(archs) > 1:
        out.append("<p>Per evaluation network, each with IDC's protocol for it (<code>--eval-arch</code>):</p>")
        out.append(_table(["network", "mean %", "std %", "runs", "epochs"],
                          [(a, _num(r["accuracy_mean"]), _num(r.get("accuracy_std") or 0.0), len(r["accuracy_runs"]),
                            r.get("epochs", "-")) for a, r in archs.items()]))
    other = summary.get("without_region_views") or summary.get("with_region_views")
    if other:
        which = "without" if "without_region_views" in summary else "with"
        out.append(f"<p>{which} region views: {_num(other['accuracy_mean'])} &plusmn; "
                   f"{_num(other.get('accuracy_std') or 0.0)} % ({len(other['accuracy_runs'])} runs, "
                   f"{other.get('num_train')} training images)</p>")
    return "".join(out)


def _timings(summary) -> str:
    rows = [(k.replace("_", " "), _num(summary[k], 1)) for k in ("distill_seconds", "loop_seconds", "eval_seconds")
            if summary.get(k) is not None]
    proxy = summary.get("proxy") or {}
    if proxy.get("seconds") is not None:
        rows.append(("proxy seconds", _num(proxy["seconds"], 1)))
    return _table(["phase", "seconds"], rows) if rows else ""


def _udd(summary) -> str:
    if summary.get("mue_initial") is None:
        return ""
    rows = [("mUE initial", _num(summary["mue_initial"], 4)), ("mUE final", _num(summary.get("mue_final"), 4))]
    rows += [(f"policy share: {k}", _num(v, 3)) for k, v in (summary.get("policy_share") or {}).items()]
    proxy = summary.get("proxy") or {}
    if proxy.get("test_accuracy") is not None:
        rows.append(("proxy test accuracy %", _num(proxy["test_accuracy"])))
    return "<h2>UDD</h2>" + _table(["", "value"], rows)


def _classes(class_names) -> str:
    if not class_names:
        return ""
    return "<h2>Classes</h2>" + _table(["index", "name"], [(f"{k}", name) for k, name in enumerate(class_names)])


def report_html(summary: dict, config: dict, pictures: dict, class_names=()) -> str:
    """The page. pictures: {caption: PNG bytes}, shown in order; class_names: every class by its index
    (grid.png's rows show the index, and the name where its font can draw it)."""
    if summary.get("method") == "full":  # no set: the protocol trained on every training image
        title = f"udd_fast: the full-data reference on {summary.get('dataset')}, preset {summary.get('preset')}"
    else:
        title = (f"udd_fast: {summary.get('method')} on {summary.get('dataset')}, IPC {summary.get('ipc')}, "
                 f"preset {summary.get('preset')}")
    imgs = "".join(f"<h3>{_e(cap)}</h3><img alt='{_e(cap)}' src='data:image/png;base64,"
                   f"{base64.b64encode(png).decode()}'>" for cap, png in pictures.items())
    settings = _table(["setting", "value"], [(k, v) for k, v in sorted(config.items())])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<h2>Accuracy</h2>{_accuracy(summary)}"
            f"<h2>Timings</h2>{_timings(summary)}{_udd(summary)}"
            f"<h2>Pictures</h2>{imgs}{_classes(class_names)}"
            f"<h2>Settings</h2>{settings}"
            f"<p class='muted'>udd_fast {_e(summary.get('version'))}, torch {_e(summary.get('torch'))}, device "
            f"{_e(summary.get('device'))}, {_e(summary.get('date'))}</p></body></html>\n")
