#!/usr/bin/env python3
"""Checks vouch-scan against the image fixtures of ../shared/corpus/gen_oci_fixture.py: every image
format is read, every planted secret is found where the ground truth says, and present/deleted is right.

  check_images.py --vouch target/release/vouch-scan --fixtures DIR   (DIR holds demo-*.tar, ground_truth.json)
"""
import argparse
import json
import os
import subprocess
import sys


def places(where):
    """ground-truth `where` -> list of (kind, key) the scanner must report."""
    if where.startswith("layer"):
        layer, path = where[len("layer"):].split(":", 1)
        return [("layer", (int(layer), path.lstrip("/")))]
    fields = where[len("config:"):].split(" and ")
    return [("config", f if f.startswith(("Env", "Labels", "history")) else f) for f in fields]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vouch", required=True)
    ap.add_argument("--fixtures", required=True)
    a = ap.parse_args()
    truth = json.load(open(os.path.join(a.fixtures, "ground_truth.json")))
    ok = True
    for fmt in ("oci-archive", "docker-save", "docker-legacy"):
        tar = os.path.join(a.fixtures, f"demo-{fmt}.tar")
        run = subprocess.run([a.vouch, "--output", "json", tar], capture_output=True, text=True)
        if run.returncode != 1:
            print(f"{fmt}: exit {run.returncode}: {run.stderr.strip()}")
            ok = False
            continue
        report = json.loads(run.stdout)
        layer_hits = {}
        config_fields = set()
        for f in report["findings"]:
            loc = f["location"]
            if loc["kind"] == "layer":
                layer_hits[(loc["layer"], loc["path"])] = loc["presence"]["status"]
            elif loc["kind"] == "config":
                config_fields.add(loc["field"])
        missing, wrong = [], []
        for s in truth:
            for kind, key in places(s["where"]):
                if kind == "layer":
                    status = layer_hits.get(key)
                    if status is None:
                        missing.append(s["where"])
                    elif (status == "present") != bool(s["in_final_fs"]):
                        wrong.append(f"{s['where']} reported {status}")
                else:
                    # `Env` in the truth means some Env[i]; `history[2].created_by` must match exactly.
                    if not any(fld == key or (key == "Env" and fld.startswith("Env[")) for fld in config_fields):
                        missing.append(f"config {key}")
        found = len(truth) - len({m for m in missing})
        print(f"{fmt:14} {len(report['findings'])} findings; planted secrets: {len(truth)}, "
              f"missing: {missing or 'none'}, wrong presence: {wrong or 'none'}")
        ok = ok and not missing and not wrong and found == len(truth)
    print("image fixtures: all formats read, every secret found, presence right" if ok else "image fixtures: FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
