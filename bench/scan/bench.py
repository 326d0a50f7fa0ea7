#!/usr/bin/env python3
"""Secret-scanner benchmark: vouch-scan and detect-secrets on the same corpus, in the same run.

Measures accuracy (recall, precision per finding, scored by score.py against the corpus' ground truth),
throughput in MB per CPU-second (user + system time of the scanner and all its children) and wall-clock
MB/s, and vouch's peak RSS while scanning a large image tar. Prints the ratios.

  bench.py --vouch target/release/vouch-scan --corpus DIR [--image IMAGE.tar] [--skip-detect-secrets]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measured(cmd, stdout=None, cwd=None):
    """Runs cmd; returns (exit code, wall seconds, CPU seconds, peak RSS in MiB) of it alone."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    # wait4 gives the child's own usage; children it waited for (detect-secrets' worker processes)
    # are included in its RUSAGE_CHILDREN, which the kernel folds into the usage reported here.
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, wall, cpu, usage.ru_maxrss / 1024, err


def corpus_mb(corpus):
    stats = json.load(open(os.path.join(corpus, "stats.json")))
    return stats["bytes"] / 1048576


def score(corpus, fmt, report):
    out = subprocess.run([sys.executable, os.path.join(HERE, "score.py"), "--corpus", corpus, "--format", fmt,
                          "--report", report, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vouch", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--image")
    ap.add_argument("--work", default="/tmp")
    ap.add_argument("--skip-detect-secrets", action="store_true")
    a = ap.parse_args()
    mb = corpus_mb(a.corpus)
    files = os.path.join(a.corpus, "files")
    rows = []

    vreport = os.path.join(a.work, "vouch-scan.json")
    code, wall, cpu, rss, err = measured([a.vouch, "--output", "json", "--report-path", vreport, files])
    if code not in (0, 1):
        sys.exit(f"vouch-scan failed ({code}): {err}")
    v = score(a.corpus, "vouch", vreport)
    rows.append(("vouch-scan", wall, cpu, rss, v))
    # One core too, so the per-core figure is not flattered by parallelism.
    code1, wall1, cpu1, _, _ = measured([a.vouch, "--threads", "1", "--output", "json", "--report-path", vreport, files])

    if not a.skip_detect_secrets:
        dreport = os.path.join(a.work, "detect-secrets.json")
        with open(dreport, "w") as out:
            # detect-secrets only reports files under its working directory: run it inside the corpus.
            code, dwall, dcpu, drss, err = measured(["detect-secrets", "scan", "--all-files", "-n", "."],
                                                    stdout=out, cwd=files)
        if code != 0:
            sys.exit(f"detect-secrets failed ({code}): {err}")
        d = score(a.corpus, "detect-secrets", dreport)
        if d["findings"] == 0:
            sys.exit("detect-secrets reported nothing: the comparison would be meaningless")
        rows.append(("detect-secrets", dwall, dcpu, drss, d))

    print(f"\ncorpus: {mb:.1f} MB, {rows[0][4]['planted']} planted secrets")
    print(f"{'scanner':16} {'recall':>7} {'precision':>9} {'MB/CPU-s':>9} {'wall MB/s':>9} {'wall s':>7} {'CPU s':>7} {'RSS MiB':>8}")
    for name, w, c, r, s in rows:
        print(f"{name:16} {s['recall']:7.3f} {s['precision']:9.3f} {mb / c:9.2f} {mb / w:9.1f} {w:7.2f} {c:7.2f} {r:8.1f}")
    print(f"vouch-scan, 1 thread: {mb / cpu1:.1f} MB/CPU-s, {mb / wall1:.1f} MB/s wall")
    if len(rows) > 1:
        ratio = (mb / rows[0][2]) / (mb / rows[1][2])
        print(f"throughput ratio (MB per CPU-second, vouch-scan / detect-secrets): {ratio:.0f}x (target >= 50x)")
    print(f"wall-clock throughput, all cores: {mb / rows[0][1]:.0f} MB/s (target >= 100 MB/s)")
    print(f"accuracy: recall {v['recall']:.3f} (target >= 0.97), precision {v['precision']:.3f} (target >= 0.90)")

    if a.image:
        size_mb = os.path.getsize(a.image) / 1048576
        ireport = os.path.join(a.work, "vouch-scan-image.json")
        code, wall, cpu, rss, err = measured([a.vouch, "--output", "json", "--report-path", ireport, a.image])
        if code not in (0, 1):
            sys.exit(f"vouch-scan failed on the image ({code}): {err}")
        r = json.load(open(ireport))
        deleted = sum(1 for f in r["findings"] if f["location"].get("presence", {}).get("status") == "deleted")
        print(f"\nimage: {size_mb:.0f} MB tar, {r['stats']['layers']} layers, {len(r['findings'])} findings "
              f"({deleted} deleted by a later layer), {wall:.1f} s wall, {size_mb / wall:.0f} MB/s")
        print(f"peak RSS scanning the image: {rss:.0f} MiB (target < 200 MiB)")


if __name__ == "__main__":
    main()
