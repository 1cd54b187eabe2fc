"""Training curves of one or more consecutive runs' ``log.csv`` files (edgeflow.train.loop's log) in one PNG.

    python bench/plot_train_log.py RUN1/log.csv [RUN2/log.csv ...] --columns cfm,prior,flow_nll,l2 [--ylim 0,2] -o curves.png

Later files continue the earlier ones: their steps are offset by the last step of the file before (a warm-started
run counts from 1 again). Validation values (the ``valid`` column, or ``valid_nll`` of the vocoder trainer, where present) are drawn as points on their
own axis. A vertical line marks where each later run starts.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_runs(paths):
    """[(offset, rows)] with rows as dicts of floats (empty cells dropped)."""
    runs, offset = [], 0
    for path in paths:
        with open(path, newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        if not rows:
            raise ValueError(f"{path}: no rows")
        runs.append((offset, rows))
        offset += int(rows[-1]["step"])
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--columns", default="loss")
    p.add_argument("--title", default="")
    p.add_argument("--ylim", default=None, metavar="LO,HI", help="the loss axis' range (spikes hide the rest)")
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    try:
        runs = read_runs(args.logs)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axv) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for col in args.columns.split(","):
        xs = [off + r["step"] for off, rows in runs for r in rows if col in r]
        ys = [r[col] for _, rows in runs for r in rows if col in r]
        ax.plot(xs, ys, label=col, lw=1)
    for i, (off, rows) in enumerate(runs):
        if i:
            ax.axvline(off, color="grey", ls=":", lw=1)
            axv.axvline(off, color="grey", ls=":", lw=1)
        pts = [(off + r["step"], r.get("valid", r.get("valid_nll"))) for r in rows
               if "valid" in r or "valid_nll" in r]
        if pts:
            axv.plot(*zip(*pts), "o-", ms=3, label=f"valid (run {i + 1})")
    ax.set_ylabel("training loss terms")
    if args.ylim:
        ax.set_ylim(*(float(v) for v in args.ylim.split(",")))
    ax.legend(fontsize=8)
    ax.set_title(args.title or ", ".join(Path(x).parent.name for x in args.logs))
    axv.set_xlabel("step (runs concatenated)")
    axv.set_ylabel("validation")
    axv.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
