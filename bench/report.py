"""Markdown table from a pytest-benchmark JSON: median ms per op case and backend, and each
backend's speed-up over torch on the same device, all from that one run.

    python bench/report.py bench.json"""
import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows[b["group"]][f"{info['backend']}-{info['device']}"] = b["stats"]["median"] * 1e3
    cols = sorted({c for r in rows.values() for c in r}, key=lambda c: (c.split("-")[1], c != "torch-" + c.split("-")[1], c))
    ratio_cols = [c for c in cols if not c.startswith("torch-") and "torch-" + c.split("-")[1] in cols]
    head = ["case"] + [f"{c} ms" for c in cols] + [f"torch/{c.split('-')[0]}" for c in ratio_cols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for group in sorted(rows):
        r = rows[group]
        cells = [group] + [f"{r[c]:.3f}" if c in r else "-" for c in cols]
        for c in ratio_cols:
            t = r.get("torch-" + c.split("-")[1])
            cells.append(f"{t / r[c]:.2f}x" if t and c in r else "-")
        print("| " + " | ".join(cells) + " |")
    m = data["machine_info"]
    print(f"\n{m.get('cpu', {}).get('brand_raw', '?')}, python {m.get('python_version')}, "
          f"torch {m.get('torch')} with {m.get('torch_threads')} threads, {data['datetime']}")


if __name__ == "__main__":
    main(sys.argv[1])
