#!/usr/bin/env python3
"""Scores a scanner report against the ground truth of a generated corpus (gen_corpus.py layout:
<corpus>/files/..., ground_truth.json, decoys.json).

Counting (the same as the corpus' reference scorer, so figures compare):
  - a planted secret is found when a finding in the same file covers one of its lines;
  - precision is per finding: findings covering a planted secret / all findings;
  - false positives are split into decoys (by decoy kind) and ordinary filler.

  score.py --corpus DIR --format vouch --report vouch.json
  score.py --corpus DIR --format detect-secrets --report ds.json
Prints a summary; --json prints it as one JSON object (for the benchmark script).
"""
import argparse
import collections
import json
import os
import sys


def relative(path, corpus_files):
    """Path of a finding relative to <corpus>/files, whatever form the scanner printed it in."""
    if os.path.isabs(path):
        try:
            return os.path.relpath(path, corpus_files)
        except ValueError:
            return path
    marker = "files" + os.sep
    idx = path.find(marker)
    return path[idx + len(marker):] if idx >= 0 else path


def findings_of(fmt, report, corpus_files):
    """Yields (relative path, first line, last line, rule) per finding."""
    data = json.load(open(report))
    if fmt == "vouch":
        for f in data["findings"]:
            loc = f["location"]
            if loc["kind"] != "file":
                continue
            yield relative(loc["path"], corpus_files), loc["line"], loc["end_line"], f["rule_id"]
    elif fmt == "detect-secrets":
        for path, items in data["results"].items():
            for it in items:
                yield relative(path, corpus_files), it["line_number"], it["line_number"], it["type"]
    else:
        sys.exit(f"unknown format {fmt!r} (vouch, detect-secrets)")


def score(corpus, fmt, report):
    files_dir = os.path.join(corpus, "files")
    truth = json.load(open(os.path.join(corpus, "ground_truth.json")))
    decoy_at = {(d["file"], d["line"]): d["kind"] for d in json.load(open(os.path.join(corpus, "decoys.json")))}
    planted = collections.defaultdict(list)
    for s in truth:
        planted[s["file"]].append(s)
    found_ids = set()
    true_findings = 0
    total = 0
    fp = collections.Counter()
    fp_rules = collections.Counter()
    for path, first, last, rule in findings_of(fmt, report, files_dir):
        total += 1
        covered = [s for s in planted.get(path, ()) if s["line_start"] <= last and first <= s["line_end"]]
        if covered:
            true_findings += 1
            found_ids.update(s["id"] for s in covered)
            continue
        kind = next((decoy_at[(path, n)] for n in range(first, last + 1) if (path, n) in decoy_at), None)
        cat = f"decoy:{kind}" if kind else "filler"
        fp[cat] += 1
        fp_rules[(cat, rule)] += 1
    by_kind = collections.defaultdict(lambda: [0, 0])
    missed = collections.Counter()
    for s in truth:
        by_kind[s["kind"]][1] += 1
        if s["id"] in found_ids:
            by_kind[s["kind"]][0] += 1
        else:
            missed[(s["kind"], s["context"])] += 1
    return {
        "planted": len(truth),
        "found": len(found_ids),
        "recall": len(found_ids) / len(truth) if truth else 0.0,
        "findings": total,
        "true_findings": true_findings,
        "precision": true_findings / total if total else 0.0,
        "by_kind": {k: {"found": f, "planted": n} for k, (f, n) in sorted(by_kind.items())},
        "missed": {f"{k} in {c}": n for (k, c), n in sorted(missed.items())},
        "false_positives": dict(fp.most_common()),
        "false_positive_rules": {f"{c} / {r}": n for (c, r), n in fp_rules.most_common(20)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--format", required=True, choices=["vouch", "detect-secrets"])
    ap.add_argument("--report", required=True)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = score(a.corpus, a.format, a.report)
    if a.json:
        print(json.dumps(r))
        return
    print(f"recall    {r['found']}/{r['planted']} = {r['recall']:.3f}")
    print(f"precision {r['true_findings']}/{r['findings']} = {r['precision']:.3f}")
    for k, v in r["by_kind"].items():
        print(f"  {k:24} {v['found']}/{v['planted']}")
    for k, n in r["missed"].items():
        print(f"  missed {k}: {n}")
    for k, n in r["false_positive_rules"].items():
        print(f"  false positive {k}: {n}")


if __name__ == "__main__":
    main()
