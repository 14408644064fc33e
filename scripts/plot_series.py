#!/usr/bin/env python3
"""Renders a time series written by `pontoon demo --series FILE` or `pontoon bench --series FILE`
to a PNG: writes per second, p50 and p99 latency per second, and the groups each node leads,
with the run's events (a node killed, leaders back) marked.

    python3 scripts/plot_series.py series.jsonl [-o series.png] [--title TEXT]

Needs matplotlib; when it is missing and this runs as root on Debian or Ubuntu, the script
installs python3-matplotlib with apt-get, else it says how to.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys


SYSTEM_PYTHON = "/usr/bin/python3"


def load_matplotlib():
    try:
        import matplotlib
    except ImportError:
        system = os.path.realpath(SYSTEM_PYTHON)
        # Debian's package serves the system interpreter; another python3 first on PATH
        # (pyenv, a venv) does not see it: hand over to the system one, which installs it.
        if os.path.exists(system) and os.path.realpath(sys.executable) != system:
            os.execv(system, [system, os.path.abspath(__file__), *sys.argv[1:]])
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("installing python3-matplotlib (apt-get)", file=sys.stderr)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-q", "python3-matplotlib"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
        try:
            import matplotlib
        except ImportError:
            sys.exit("matplotlib is missing: apt-get install python3-matplotlib "
                     "(or pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON line: {e}")
    if not rows:
        sys.exit(f"{path}: no samples")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", help="JSON lines from --series")
    parser.add_argument("-o", "--output", help="PNG to write (default: SERIES with .png)")
    parser.add_argument("--title", default=None, help="title above the plots")
    args = parser.parse_args()
    output = args.output or os.path.splitext(args.series)[0] + ".png"

    rows = read(args.series)
    plt = load_matplotlib()
    t = [r["t_s"] for r in rows]
    nodes = sorted({n for r in rows for n in r.get("leaders", {})}, key=int)

    fig, (rate, latency, leaders) = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True)
    fig.suptitle(args.title or f"pontoon: {os.path.basename(args.series)}")

    rate.plot(t, [r["writes_per_s"] for r in rows], color="tab:blue")
    rate.set_ylabel("acknowledged writes / s")
    rate.set_ylim(bottom=0)

    latency.plot(t, [r["p50_us"] / 1000 for r in rows], label="p50", color="tab:green")
    latency.plot(t, [r["p99_us"] / 1000 for r in rows], label="p99", color="tab:red")
    latency.set_ylabel("commit latency (ms)")
    latency.set_yscale("log")
    latency.legend(loc="upper left")

    for node in nodes:
        leaders.step(t, [r.get("leaders", {}).get(node, 0) for r in rows], where="post",
                     label=f"node {node}")
    leaders.set_ylabel("groups led")
    leaders.set_xlabel("seconds since the load started")
    leaders.set_ylim(bottom=0)
    leaders.legend(loc="upper left", ncol=max(1, len(nodes)))

    events = [r for r in rows if r.get("event")]
    for i, r in enumerate(events):
        for ax in (rate, latency, leaders):
            ax.axvline(r["t_s"], color="black", linestyle="--", linewidth=0.8)
        # Staggered, so events close together stay readable.
        rate.annotate(r["event"], (r["t_s"], rate.get_ylim()[1]), xytext=(3, -4 - 11 * i),
                      textcoords="offset points", fontsize=8, va="top",
                      bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none"))
    for ax in (rate, latency, leaders):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    print(output)


if __name__ == "__main__":
    main()
