//! The `vouch-scan` binary: exit codes, output formats, baselines, ignore files, stdin, allowlists. The
//! secret values planted here must never appear whole in any output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::images::{docker_save_files, write_tar, GITHUB, SLACK};

fn run(args: &[&str], cwd: &Path, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vouch-scan"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for secret in [GITHUB, SLACK, "Xk9#mQ2vLp7"] {
        assert!(!all.contains(secret), "a secret was printed whole: {all}");
    }
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(p.join("src/app.py"), format!("import os\nSLACK = \"{SLACK}\"\n")).unwrap();
    std::fs::write(p.join(".env"), format!("GITHUB_TOKEN={GITHUB}\n")).unwrap();
    std::fs::write(p.join("ignored.env"), "DB_URL=postgres://app:Xk9#mQ2vLp7@db/app\n").unwrap();
    std::fs::write(p.join(".gitignore"), "ignored.env\n").unwrap();
    std::fs::write(p.join("clean.md"), "# nothing here\n").unwrap();
    dir
}

#[test]
fn exit_codes_and_ignore_files() {
    let dir = tree();
    let out = run(&["-o", "json", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let mut rules: Vec<&str> =
        r["findings"].as_array().unwrap().iter().map(|f| f["rule_id"].as_str().unwrap()).collect();
    rules.sort();
    assert_eq!(rules, ["github-token", "slack-token"], "hidden .env scanned, ignored.env not");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("scanning:"), "no progress line in a pipe");

    let out = run(&["-o", "json", "--all", "."], dir.path(), None);
    assert_eq!(json(&out)["findings"].as_array().unwrap().len(), 3);

    let out = run(&["clean.md"], dir.path(), None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 findings"));

    let out = run(&["no-such-path"], dir.path(), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-such-path"));
    let out = run(&["--output", "yaml", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(2));

    let out = run(
        &["--skip-rule", "slack-token", "--skip-path", "^\\./\\.env$", "-o", "json", "."],
        dir.path(),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = run(&["--skip-rule", "no-such-rule", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such rule"));
}

#[test]
fn table_json_and_sarif_carry_the_same_findings() {
    let dir = tree();
    let table = run(&["."], dir.path(), None);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.contains("github-token") && t.contains("./.env:1:14") && t.contains("ghp_****"), "{t}");
    assert!(t.contains("How to replace them"), "{t}");

    let sarif = run(&["-o", "sarif", "."], dir.path(), None);
    assert_eq!(sarif.status.code(), Some(1));
    let s = json(&sarif);
    assert_eq!(s["version"], "2.1.0");
    let results = s["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["ruleId"].is_string());
        assert!(r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64().unwrap() >= 1);
        assert_eq!(r["partialFingerprints"]["vouchFingerprint/v1"].as_str().unwrap().len(), 32);
    }
    let defined: Vec<&str> = s["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(defined.contains(&"github-token") && defined.contains(&"slack-token"));

    // --report-path writes the file; stdout stays empty.
    let out = run(&["-o", "json", "--report-path", "r.json", "."], dir.path(), None);
    assert!(out.stdout.is_empty());
    let r: Value = serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(r["findings"].as_array().unwrap().len(), 2);
    assert_eq!(r["stats"]["files"], 4, "{r}");
}

#[test]
fn baseline_accepts_known_findings_only() {
    let dir = tree();
    let out = run(&["-o", "json", "."], dir.path(), None);
    std::fs::write(dir.path().join("baseline.json"), &out.stdout).unwrap();
    let out = run(&["-o", "json", "--baseline", "baseline.json", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["stats"]["suppressed_baseline"], 2);
    // Moving a secret to another line keeps its fingerprint; a new secret is reported.
    std::fs::write(
        dir.path().join(".env"),
        format!("\n\nGITHUB_TOKEN={GITHUB}\nNEW=ghp_Q8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u\n"),
    )
    .unwrap();
    let out = run(&["-o", "json", "--baseline", "baseline.json", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["findings"].as_array().unwrap().len(), 1);
    assert_eq!(r["findings"][0]["location"]["line"], 4);
    let out = run(&["--baseline", "clean.md", "."], dir.path(), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output json"));
}

#[test]
fn stdin_text_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["-o", "json", "-"], dir.path(), Some(format!("x\ntoken={GITHUB}\n").as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["findings"][0]["location"]["path"], "-");
    assert_eq!(json(&out)["findings"][0]["location"]["line"], 2);

    let img = dir.path().join("img.tar");
    write_tar(&img, &docker_save_files());
    let out = run(&["-o", "json", "-"], dir.path(), Some(&std::fs::read(&img).unwrap()));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!(r["stats"]["images"], 1);
    assert_eq!(r["findings"].as_array().unwrap().len(), 8);

    let out = run(&["--list-rules"], dir.path(), None);
    let list = String::from_utf8_lossy(&out.stdout);
    for id in ["aws-access-key-id", "generic-password", "private-key", "jwt"] {
        assert!(list.contains(id), "{list}");
    }
}

/// The SARIF 2.1.0 schema: VOUCH_SARIF_SCHEMA, else where scripts/test puts it.
fn sarif_schema() -> std::path::PathBuf {
    let path = std::env::var_os("VOUCH_SARIF_SCHEMA").map(Into::into).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/vouch-test/sarif-2.1.0-rtm.5.json")
    });
    assert!(
        path.is_file(),
        "the SARIF 2.1.0 schema is not at {} (scripts/test fetches it; or set VOUCH_SARIF_SCHEMA)",
        path.display()
    );
    path
}

#[test]
fn sarif_is_valid_and_what_github_code_scanning_takes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("my dir")).unwrap();
    std::fs::write(p.join("my dir/app #1.env"), format!("GITHUB_TOKEN={GITHUB}\n")).unwrap();
    std::fs::write(p.join("ünï 100%.yaml"), format!("slack: {SLACK}\n")).unwrap();
    std::fs::write(p.join("db.env"), "DB_PASSWORD=Xk9#mQ2vLp7\n").unwrap();
    let out = run(&["-o", "sarif", "--report-path", "scan.sarif", "."], p, None);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(p.join("scan.sarif")).unwrap();
    let s: Value = serde_json::from_str(&text).unwrap();

    let mut uris: Vec<&str> = s["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap())
        .collect();
    uris.sort();
    assert_eq!(uris, ["%C3%BCn%C3%AF%20100%25.yaml", "db.env", "my%20dir/app%20%231.env"]);
    for rule in s["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap() {
        let sev: f64 = rule["properties"]["security-severity"].as_str().unwrap().parse().unwrap();
        assert!((0.0..=10.0).contains(&sev), "{rule}");
        let tags = rule["properties"]["tags"].as_array().unwrap();
        assert!(tags.iter().any(|t| t == "security"), "{rule}");
    }
    let sev = |id: &str| {
        s["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()
            ["properties"]["security-severity"]
            .clone()
    };
    assert_eq!(sev("github-token"), "9.0");
    assert_eq!(sev("generic-password"), "7.5");

    // The independent check: Python's jsonschema against OASIS' SARIF 2.1.0 schema (draft 4).
    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 errors = list(jsonschema.Draft4Validator(schema).iter_errors(json.load(open(sys.argv[2]))))\n\
                 for e in errors: print(list(e.absolute_path), e.message)\n\
                 sys.exit(1 if errors else 0)\n";
    let out = Command::new("timeout")
        .args(["120", "python3", "-c", check])
        .arg(sarif_schema())
        .arg(p.join("scan.sarif"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SARIF does not validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn git_history_finds_removed_secrets_once_with_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let git = |args: &[&str]| {
        let out = Command::new("timeout")
            .args(["60", "git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(p)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    std::fs::write(p.join(".env"), format!("GITHUB_TOKEN={GITHUB}\n")).unwrap();
    std::fs::write(p.join("app.py"), "print('hi')\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "add config"]);
    let first = git(&["rev-parse", "HEAD"]);
    // Another line changes: a new blob with the same secret, still one finding at the first commit.
    std::fs::write(p.join(".env"), format!("DEBUG=1\nGITHUB_TOKEN={GITHUB}\n")).unwrap();
    git(&["commit", "-qam", "debug"]);
    std::fs::write(p.join(".env"), "DEBUG=1\n").unwrap();
    git(&["commit", "-qam", "remove the token"]);

    let out = run(&["-o", "json", "."], p, None);
    assert_eq!(out.status.code(), Some(0), "the working tree is clean");
    let out = run(&["--git", "-o", "json", "."], p, None);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    let findings = r["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{r}");
    let loc = &findings[0]["location"];
    assert_eq!(findings[0]["rule_id"], "github-token");
    assert_eq!(loc["kind"], "commit");
    assert_eq!(loc["commit"], first.as_str());
    assert_eq!((loc["path"].as_str(), loc["line"].as_u64()), (Some(".env"), Some(1)));
    assert_eq!(r["stats"]["files"], 4, "three versions of .env and app.py, each blob once");
    let table = run(&["--git", "."], p, None);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.contains(&format!(".env:1:14 (commit {})", &first[..12])), "{t}");

    // Not a repository: an error naming it, exit code 2.
    let plain = tempfile::tempdir().unwrap();
    let out = run(&["--git", "."], plain.path(), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a git repository"));
}

#[test]
fn test_data_is_counted_not_reported_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tests")).unwrap();
    std::fs::write(p.join("tests/conftest.py"), "DB_PASSWORD = \"Xk9#mQ2vLp7\"\n").unwrap();
    let out = run(&["-o", "json", "."], p, None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["stats"]["suppressed_test_data"], 1);
    let table = run(&["."], p, None);
    assert!(String::from_utf8_lossy(&table.stdout).contains("1 in test data"));
    let out = run(&["-o", "json", "--include-test-data", "."], p, None);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["findings"][0]["rule_id"], "generic-password");
    assert_eq!(r["stats"]["suppressed_test_data"], 0);
}
