//! Command line of `vouch scan` (and the standalone `vouch-scan`): options, progress display, output.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use regex::Regex;

use crate::rules::{RuleSet, DEFAULT_RULES};
use crate::scan::{Input, ScanOptions, Scanner};
use crate::stream::{Limits, Progress};
use crate::ScanError;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people (secrets redacted).
    Table,
    /// JSON: findings, errors, counters; usable as a baseline.
    Json,
    /// SARIF 2.1.0 for code-scanning UIs.
    Sarif,
}

/// Finds hardcoded secrets in files, directory trees and offline container images.
///
/// Inputs are detected by content: a directory is walked (respecting .gitignore; hidden files such as
/// .env are scanned), a directory with an `oci-layout` file is an OCI image layout, a tar (or gzip/zstd
/// compressed tar) holding manifest.json or index.json is an image (`docker save`, old and new, or an
/// OCI archive), any other tar is scanned entry by entry, `-` reads standard input.
///
/// Exit code: 0 no findings, 1 findings, 2 an input (or part of one) could not be scanned or the
/// options are wrong.
#[derive(Debug, Parser)]
#[command(
    name = "vouch-scan",
    version,
    after_help = "Examples:\n  vouch scan .\n  vouch scan --output sarif \
    --report-path scan.sarif src/\n  docker save app:1 -o app.tar && vouch scan app.tar\n  vouch scan --output json \
    . > baseline.json && vouch scan --baseline baseline.json ."
)]
pub struct ScanArgs {
    /// Files, directories, image archives or OCI layouts to scan; `-` for standard input.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Also scan files excluded by .gitignore and .ignore files.
    #[arg(long, env = "VOUCH_SCAN_ALL")]
    pub all: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", env = "VOUCH_SCAN_OUTPUT")]
    pub output: Output,
    /// Write the report to this file instead of standard output.
    #[arg(long, env = "VOUCH_SCAN_REPORT_PATH")]
    pub report_path: Option<PathBuf>,
    /// Rules file(s) to add; a rule with the id of a default rule replaces it (see --list-rules).
    #[arg(long = "rules", env = "VOUCH_SCAN_RULES", value_delimiter = ',')]
    pub rules: Vec<PathBuf>,
    /// Use only the rules given with --rules.
    #[arg(long)]
    pub no_default_rules: bool,
    /// A JSON report of an earlier scan: its findings (by fingerprint) are accepted and not reported.
    #[arg(long, env = "VOUCH_SCAN_BASELINE")]
    pub baseline: Option<PathBuf>,
    /// Rule id not to run (repeatable).
    #[arg(long = "skip-rule", value_name = "ID")]
    pub skip_rules: Vec<String>,
    /// Regex of paths not to scan (repeatable), e.g. `^vendor/`.
    #[arg(long = "skip-path", value_name = "REGEX")]
    pub skip_paths: Vec<String>,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "VOUCH_SCAN_THREADS")]
    pub threads: Option<usize>,
    /// Most bytes one image layer may decompress to.
    #[arg(long, default_value_t = Limits::default().max_layer_bytes, env = "VOUCH_SCAN_MAX_LAYER_BYTES")]
    pub max_layer_bytes: u64,
    /// Never show the progress line (it only shows on a terminal, with table output).
    #[arg(long)]
    pub no_progress: bool,
    /// Also report private keys, JWTs and generic passwords and secrets in tests, fixtures and
    /// samples (`tests/`, `testdata/`, `examples/`, `x_test.go`, ...), where they are test vectors far more
    /// often than leaks; provider tokens are reported there in any case.
    #[arg(long, env = "VOUCH_SCAN_INCLUDE_TEST_DATA")]
    pub include_test_data: bool,
    /// Scan the history of the git repositories given (every blob reachable from HEAD, each finding
    /// with the commit that brought it in) instead of their working trees. Needs `git`.
    #[arg(long, env = "VOUCH_SCAN_GIT")]
    pub git: bool,
    /// Print the rules in use and exit.
    #[arg(long)]
    pub list_rules: bool,
}

/// Runs a scan; returns the exit code (0 clean, 1 findings, 2 error).
pub fn run(args: &ScanArgs) -> u8 {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn load_rules(args: &ScanArgs) -> anyhow::Result<RuleSet> {
    let mut texts: Vec<(String, String)> = Vec::new();
    if !args.no_default_rules {
        texts.push(("built-in rules".to_owned(), DEFAULT_RULES.to_owned()));
    }
    for p in &args.rules {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read rules file `{}`: {e}", p.display()))?;
        texts.push((p.display().to_string(), text));
    }
    if texts.is_empty() {
        return Err(ScanError::Usage("--no-default-rules needs at least one --rules file".to_owned()).into());
    }
    let refs: Vec<(&str, &str)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut rules = RuleSet::from_files(&refs, &args.skip_rules)?;
    if args.include_test_data {
        rules.report_test_data();
    }
    Ok(rules)
}

fn load_baseline(path: &PathBuf) -> anyhow::Result<HashSet<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read baseline `{}`: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "baseline `{}` is not JSON ({e}); write one with `vouch scan --output json`",
            path.display()
        )
    })?;
    let findings = v.get("findings").and_then(|f| f.as_array()).ok_or_else(|| {
        anyhow::anyhow!(
            "baseline `{}` has no `findings` list; write one with `vouch scan --output json`",
            path.display()
        )
    })?;
    Ok(findings.iter().filter_map(|f| f.get("fingerprint")?.as_str().map(str::to_owned)).collect())
}

fn run_inner(args: &ScanArgs) -> anyhow::Result<u8> {
    let rules = load_rules(args)?;
    if args.list_rules {
        for r in &rules.rules {
            println!("{:28} {}", r.id, r.description);
        }
        return Ok(0);
    }
    let skip_paths = args
        .skip_paths
        .iter()
        .map(|p| Regex::new(p).map_err(|e| anyhow::anyhow!("--skip-path `{p}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let baseline = args.baseline.as_ref().map(load_baseline).transpose()?.unwrap_or_default();
    let mut opts = ScanOptions { all_files: args.all, baseline, skip_paths, ..ScanOptions::default() };
    if let Some(t) = args.threads {
        if t == 0 {
            return Err(ScanError::Usage("--threads must be at least 1".to_owned()).into());
        }
        opts.threads = t;
    }
    opts.limits.max_layer_bytes = args.max_layer_bytes;
    if args.git && args.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(
            ScanError::Usage("--git scans repositories; `-` (standard input) is not one".to_owned()).into()
        );
    }
    let inputs: Vec<Input> = args
        .paths
        .iter()
        .map(|p| match p.as_os_str() {
            _ if args.git => Input::Git(p.clone()),
            s if s == "-" => Input::Stdin,
            _ => Input::Path(p.clone()),
        })
        .collect();
    let scanner = Scanner::new(rules, opts);
    let progress = Progress::default();
    let show_progress = args.output == Output::Table
        && !args.no_progress
        && args.report_path.is_none()
        && std::io::stderr().is_terminal();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        if show_progress {
            s.spawn(|| progress_line(&progress, &done, started));
        }
        let r = scanner.scan(&inputs, &progress);
        done.store(true, Ordering::Relaxed);
        r
    });
    let text = match args.output {
        Output::Table => report.to_table(started.elapsed().as_secs_f64()),
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Sarif => serde_json::to_string_pretty(&report.to_sarif(scanner.rules()))? + "\n",
    };
    match &args.report_path {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", p.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error of the scan.
            let _ = out.write_all(text.as_bytes());
        }
    }
    if args.output != Output::Table {
        for e in &report.errors {
            eprintln!("error: {}: {}", e.source, e.message);
        }
    }
    Ok(report.exit_code())
}

fn progress_line(progress: &Progress, done: &AtomicBool, started: Instant) {
    let mut shown = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let mb = progress.bytes.load(Ordering::Relaxed) as f64 / 1_048_576.0;
        let files = progress.files.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprint!("\rscanning: {files} files, {mb:.0} MB, {:.0} MB/s   ", mb / secs.max(0.001));
        shown = true;
    }
    if shown {
        eprint!("\r{:60}\r", "");
    }
}
