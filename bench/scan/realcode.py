#!/usr/bin/env python3
"""Real-code test set: copies of source and documentation files installed on this machine, with secrets
planted into some of them (ground truth recorded), scanned by vouch-scan and by gitleaks in the same run.

Nothing of the set is checked in: it is rebuilt by one command from what is installed here (Python's
standard library and dist-packages, /usr/share/doc, ~/.cargo/registry/src, global npm packages), so the
figures depend on the machine; the same machine and seed give the same set.

  realcode.py generate --out DIR [--seed 1] [--mb 80] [--secrets 200]
  realcode.py score --set DIR --format vouch|gitleaks --report FILE [--json] [--show-fp N]
  realcode.py bench --set DIR --vouch BIN --gitleaks BIN --work DIR [--show-fp N]

Every finding that is not on a planted secret's lines counts as a false finding: the files are public
code and documentation, and `--show-fp N` prints a sample of them (file, line, rule, the line's text) so
a person can check that they are not secrets.
"""
import argparse
import base64
import collections
import hashlib
import json
import os
import random
import shutil
import string
import subprocess
import sys
import time

HOME = os.path.expanduser("~")
# (label, root, share of the size budget). Copies go under files/<label>/; path parts that the
# scanners' default skip lists key on (node_modules, lib/python3.x, *.dist-info) are not reproduced, so
# both scanners read every copied file.
SOURCES = [
    ("py-stdlib", "/usr/lib/python3.11", 0.25),
    ("py-dist", "/usr/lib/python3/dist-packages", 0.20),
    ("doc", "/usr/share/doc", 0.10),
    ("cargo", os.path.join(HOME, ".cargo/registry/src"), 0.30),
    ("npm", "/usr/lib/node_modules", 0.15),
]
SKIP_NAMES = {".gitignore", ".ignore", ".gitleaks.toml", ".gitleaksignore", ".vouch-scan.toml"}
SKIP_EXT = (".gz", ".xz", ".bz2", ".zst", ".zip", ".whl", ".pyc", ".so", ".png", ".jpg", ".gif", ".ico",
            ".woff", ".woff2", ".ttf", ".pdf", ".a", ".rlib", ".wasm", ".jar", ".db")
MAX_FILE = 512 * 1024


def renamed(rel):
    parts = []
    for p in rel.split("/"):
        if p == "node_modules":
            p = "deps"
        elif p.endswith(".dist-info") or p.endswith(".egg-info"):
            p = p.rsplit(".", 1)[0].replace("-", "_") + "_meta"
        parts.append(p)
    return "/".join(parts)


def is_text(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(head) - 4  # a character cut by the 8 KiB window
    return True


def candidates(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
        for name in sorted(filenames):
            if name in SKIP_NAMES or name.endswith(SKIP_EXT):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if 0 < size <= MAX_FILE:
                yield path, size


def rand_str(rng, alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def make_secret(kind, rng):
    """(variable name, value, extra lines after the first) of a planted secret of `kind`."""
    if kind == "aws-access-key-id":
        return "AWS_ACCESS_KEY_ID", "AKIA" + rand_str(rng, string.ascii_uppercase + "234567", 16)
    if kind == "aws-secret-access-key":
        return "aws_secret_access_key", rand_str(rng, B64, 40)
    if kind == "github-token":
        return "GITHUB_TOKEN", "ghp_" + rand_str(rng, ALNUM, 36)
    if kind == "gitlab-token":
        return "GITLAB_TOKEN", "glpat-" + rand_str(rng, URLSAFE, 20)
    if kind == "slack-token":
        return "SLACK_BOT_TOKEN", "xoxb-%d-%d-%s" % (rng.randrange(10**11, 10**12), rng.randrange(10**12, 10**13),
                                                      rand_str(rng, ALNUM, 24))
    if kind == "stripe-key":
        return "STRIPE_SECRET_KEY", "sk_live_" + rand_str(rng, ALNUM, 24)
    if kind == "npm-token":
        return "NPM_TOKEN", "npm_" + rand_str(rng, ALNUM, 36)
    if kind == "google-api-key":
        return "GOOGLE_API_KEY", "AIza" + rand_str(rng, URLSAFE, 35)
    if kind == "sendgrid-api-key":
        return "SENDGRID_API_KEY", "SG." + rand_str(rng, URLSAFE, 22) + "." + rand_str(rng, URLSAFE, 43)
    if kind == "vault-token":
        return "VAULT_TOKEN", "hvs." + rand_str(rng, URLSAFE, 91)
    if kind == "jwt":
        header = b64url({"alg": "RS256", "typ": "JWT", "kid": rand_str(rng, ALNUM, 8)})
        claims = b64url({"sub": "svc-" + rand_str(rng, string.ascii_lowercase, 6), "iat": 1700000000,
                         "exp": 1900000000, "iss": "https://auth.internal"})
        return "AUTH_TOKEN", f"{header}.{claims}.{rand_str(rng, URLSAFE, 43)}"
    if kind == "database-url":
        pw = rand_str(rng, ALNUM, 8) + rng.choice("!*_-") + rand_str(rng, ALNUM, 5)
        return "DATABASE_URL", f"postgres://app:{pw}@db.internal:5432/orders"
    if kind == "generic-password":
        pw = rand_str(rng, string.ascii_letters, 6) + rng.choice("#!@%_") + rand_str(rng, string.digits, 3) \
            + rand_str(rng, ALNUM, 4)
        return "DB_PASSWORD", pw
    if kind == "generic-api-key":
        return "PAYMENTS_API_KEY", rand_str(rng, ALNUM, 32)
    raise ValueError(kind)


KINDS = ["aws-access-key-id", "aws-secret-access-key", "github-token", "gitlab-token", "slack-token",
         "stripe-key", "npm-token", "google-api-key", "sendgrid-api-key", "vault-token", "jwt",
         "database-url", "generic-password", "generic-api-key", "private-key"]


def private_key_lines(rng):
    body = base64.b64encode(bytes(rng.randrange(256) for _ in range(1190))).decode()
    lines = ["-----BEGIN RSA PRIVATE KEY-----"]
    lines += [body[i:i + 64] for i in range(0, len(body), 64)]
    lines.append("-----END RSA PRIVATE KEY-----")
    return lines


def planted_lines(kind, path, rng):
    """The lines to insert, written the way the file's language assigns a value."""
    ext = os.path.splitext(path)[1].lower()
    if kind == "private-key":
        lines = private_key_lines(rng)
        if ext == ".py":
            return ['SIGNING_KEY = """' + lines[0]] + lines[1:-1] + [lines[-1] + '"""']
        return lines
    name, value = make_secret(kind, rng)
    lower = name.lower()
    camel = lower.split("_")[0] + "".join(p.title() for p in lower.split("_")[1:])
    if ext in (".py", ".pyi"):
        return [f'{name} = "{value}"']
    if ext in (".js", ".mjs", ".cjs", ".ts"):
        return [f'const {camel} = "{value}";']
    if ext == ".rs":
        return [f'const {name}: &str = "{value}";']
    if ext in (".c", ".h", ".cc", ".cpp"):
        return [f'#define {name} "{value}"']
    if ext == ".go":
        return [f'var {camel} = "{value}"']
    if ext == ".json":
        return [f'  "{camel}": "{value}",']
    if ext in (".yml", ".yaml"):
        return [f"  {lower}: {value}"]
    if ext == ".toml":
        return [f'{lower} = "{value}"']
    return [f"export {name}={value}"]


def generate(a):
    rng = random.Random(a.seed)
    out_files = os.path.join(a.out, "files")
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(out_files)
    budget = a.mb * 1048576
    chosen = []  # (label, src, rel)
    total = 0
    for label, root, share in SOURCES:
        if not os.path.isdir(root):
            print(f"note: {root} is not here; its share goes unused", file=sys.stderr)
            continue
        pool = [(p, s) for p, s in candidates(root)]
        # A stable pseudo-random order (by path and seed), so the same machine gives the same set.
        pool.sort(key=lambda ps: hashlib.sha256(f"{a.seed}:{ps[0]}".encode()).digest())
        room = budget * share
        for path, size in pool:
            if room < size:
                continue
            if not is_text(path):
                continue
            room -= size
            total += size
            chosen.append((label, path, os.path.join(label, renamed(os.path.relpath(path, root)))))
    for _, src, rel in chosen:
        dst = os.path.join(out_files, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
    # Plant: one secret per chosen file, kinds in turn, at a random line.
    targets = rng.sample(chosen, min(a.secrets, len(chosen)))
    truth = []
    for i, (_, _, rel) in enumerate(sorted(targets, key=lambda t: t[2])):
        kind = KINDS[i % len(KINDS)]
        dst = os.path.join(out_files, rel)
        with open(dst, "rb") as f:
            lines = f.read().split(b"\n")
        at = rng.randrange(len(lines))
        new = [s.encode() for s in planted_lines(kind, dst, rng)]
        lines[at:at] = new
        with open(dst, "wb") as f:
            f.write(b"\n".join(lines))
        truth.append({"id": i, "file": rel, "kind": kind, "line_start": at + 1, "line_end": at + len(new)})
    stats = {"files": len(chosen), "bytes": total, "secrets": len(truth), "seed": a.seed,
             "sources": collections.Counter(label for label, _, _ in chosen)}
    json.dump(truth, open(os.path.join(a.out, "ground_truth.json"), "w"), indent=1)
    json.dump(stats, open(os.path.join(a.out, "stats.json"), "w"), indent=1)
    print(f"{len(chosen)} files, {total / 1048576:.1f} MB, {len(truth)} planted secrets in {a.out}")


def load_findings(fmt, report, root):
    """(relative path, first line, last line, rule id) of each finding."""
    out = []
    if fmt == "vouch":
        for f in json.load(open(report))["findings"]:
            loc = f["location"]
            out.append((os.path.relpath(loc["path"], root), loc["line"], loc["end_line"], f["rule_id"]))
    elif fmt == "gitleaks":
        for f in json.load(open(report)):
            out.append((os.path.relpath(f["File"], root), f["StartLine"], f["EndLine"], f["RuleID"]))
    else:
        raise SystemExit(f"unknown format {fmt}")
    return out


def score(set_dir, fmt, report, show_fp=0):
    root = os.path.join(set_dir, "files")
    truth = json.load(open(os.path.join(set_dir, "ground_truth.json")))
    by_file = collections.defaultdict(list)
    for s in truth:
        by_file[s["file"]].append(s)
    found = set()
    false = []
    for rel, start, end, rule in load_findings(fmt, report, root):
        hit = [s for s in by_file.get(rel, []) if s["line_start"] <= end and start <= s["line_end"]]
        if hit:
            found.update(s["id"] for s in hit)
        else:
            false.append((rel, start, rule))
    per_kind = collections.defaultdict(lambda: [0, 0])
    for s in truth:
        per_kind[s["kind"]][1] += 1
        per_kind[s["kind"]][0] += s["id"] in found
    result = {
        "planted": len(truth), "found": len(found), "recall": len(found) / max(1, len(truth)),
        "false_findings": len(false),
        "false_by_rule": dict(collections.Counter(r for _, _, r in false).most_common()),
        "false_files": len({f for f, _, _ in false}),
        "recall_by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_kind.items())},
    }
    if show_fp:
        rng = random.Random(7)
        sample = rng.sample(false, min(show_fp, len(false)))
        result["false_sample"] = []
        for rel, line, rule in sorted(sample):
            try:
                with open(os.path.join(root, rel), "rb") as f:
                    text = f.read().split(b"\n")[line - 1].decode("utf-8", "replace").strip()[:200]
            except (OSError, IndexError):
                text = "?"
            result["false_sample"].append(f"{rule}  {rel}:{line}  {text}")
    return result


def run_timed(cmd):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), time.monotonic() - start, usage.ru_utime + usage.ru_stime, err


def bench(a):
    root = os.path.join(a.set, "files")
    stats = json.load(open(os.path.join(a.set, "stats.json")))
    mb = stats["bytes"] / 1048576
    vrep = os.path.join(a.work, "realcode-vouch.json")
    grep_ = os.path.join(a.work, "realcode-gitleaks.json")
    # vouch honours .gitignore files: none were copied, and --all makes sure nothing is skipped.
    code, vwall, vcpu, err = run_timed([a.vouch, "--all", "--no-progress", "--output", "json",
                                        "--report-path", vrep, root])
    if code not in (0, 1):
        sys.exit(f"vouch-scan failed ({code}): {err}")
    code, gwall, gcpu, err = run_timed([a.gitleaks, "dir", "--no-banner", "--log-level", "error",
                                        "--exit-code", "0", "--report-format", "json",
                                        "--report-path", grep_, root])
    if code != 0:
        sys.exit(f"gitleaks failed ({code}): {err}")
    v = score(a.set, "vouch", vrep, a.show_fp)
    g = score(a.set, "gitleaks", grep_, a.show_fp if a.show_fp_gitleaks else 0)
    if a.json:
        print(json.dumps({"set": stats, "vouch": v, "gitleaks": g}, indent=1))
        return
    print(f"\nreal-code set: {stats['files']} files, {mb:.1f} MB, {stats['secrets']} planted secrets "
          f"(seed {stats['seed']})")
    print(f"{'scanner':<12} {'recall':>14} {'false findings':>15} {'in files':>9} {'wall s':>7} {'CPU s':>7}")
    for name, r, wall, cpu in (("vouch-scan", v, vwall, vcpu), ("gitleaks", g, gwall, gcpu)):
        print(f"{name:<12} {r['found']:>4}/{r['planted']:<4} {r['recall']:5.1%} {r['false_findings']:>15} "
              f"{r['false_files']:>9} {wall:7.2f} {cpu:7.2f}")
    ratio = g["false_findings"] / max(1, v["false_findings"])
    print(f"\nfalse findings, gitleaks / vouch-scan: {ratio:.1f}x"
          f"{' (vouch-scan had none; ratio against 1)' if v['false_findings'] == 0 else ''}")
    print(f"recall, vouch-scan - gitleaks: {100 * (v['recall'] - g['recall']):+.1f} points")
    print("recall by kind (vouch-scan | gitleaks):")
    for k in v["recall_by_kind"]:
        print(f"  {k:<24} {v['recall_by_kind'][k]:>6} | {g['recall_by_kind'].get(k, '-')}")
    print("false findings by rule, vouch-scan:", v["false_by_rule"] or "none")
    top = dict(list(g["false_by_rule"].items())[:8])
    print("false findings by rule, gitleaks (top 8):", top or "none")
    for name, r in (("vouch-scan", v), ("gitleaks", g)):
        if r.get("false_sample"):
            print(f"\nsample of {name}'s false findings (check by hand that they are not secrets):")
            for line in r["false_sample"]:
                print("  " + line)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--mb", type=float, default=80)
    g.add_argument("--secrets", type=int, default=200)
    s = sub.add_parser("score")
    s.add_argument("--set", required=True)
    s.add_argument("--format", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--show-fp", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("--set", required=True)
    b.add_argument("--vouch", required=True)
    b.add_argument("--gitleaks", required=True)
    b.add_argument("--work", required=True)
    b.add_argument("--show-fp", type=int, default=0)
    b.add_argument("--show-fp-gitleaks", action="store_true")
    b.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.cmd == "generate":
        generate(a)
    elif a.cmd == "score":
        print(json.dumps(score(a.set, a.format, a.report, a.show_fp), indent=1))
    else:
        bench(a)


if __name__ == "__main__":
    main()
