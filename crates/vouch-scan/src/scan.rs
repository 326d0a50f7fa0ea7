//! The scan: inputs sorted into trees, files, archives and images; work spread over threads (files of
//! a tree, layers of an image); candidates turned into findings with places; baseline applied.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use regex::Regex;

use crate::detect::{Candidate, FileClass};
use crate::image::{self, Blobs, LayerScan};
use crate::report::{Finding, Location, Report, ScanIssue};
use crate::rules::RuleSet;
use crate::stream::{decompressed, scan_stream, Compression, Limits, Progress, TextOutcome};

/// What to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file, directory tree, image archive or OCI layout directory.
    Path(PathBuf),
    /// Standard input: text, or an image archive (spooled to a temporary file).
    Stdin,
    /// The history of a git repository: every blob reachable from HEAD.
    Git(PathBuf),
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Scan files that .gitignore/.ignore exclude (hidden files are always scanned: `.env` matters).
    pub all_files: bool,
    /// Worker threads.
    pub threads: usize,
    /// Decompression limits.
    pub limits: Limits,
    /// Fingerprints to leave out.
    pub baseline: HashSet<String>,
    /// Paths not to scan (regexes, on top of the rules' allowlist).
    pub skip_paths: Vec<Regex>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            all_files: false,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: Limits::default(),
            baseline: HashSet::new(),
            skip_paths: Vec::new(),
        }
    }
}

/// Runs scans with one rule set.
pub struct Scanner {
    rules: RuleSet,
    opts: ScanOptions,
}

/// Runs `f` over `jobs` on `threads` threads; results in job order.
fn parallel<J: Sync, T: Send>(jobs: &[J], threads: usize, f: impl Fn(&J) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = f(job);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

enum FileOutcome {
    Scanned(TextOutcome),
    Skipped,
    Error(String),
}

impl FileOutcome {
    /// `failure` says what a read error means here (`cannot read`, `corrupt or truncated entry`).
    fn of(result: io::Result<TextOutcome>, failure: &str) -> Self {
        match result {
            Ok(t) => FileOutcome::Scanned(t),
            Err(e) => FileOutcome::Error(format!("{failure}: {e}")),
        }
    }
}

impl Scanner {
    /// A scanner with these rules and options.
    pub fn new(rules: RuleSet, opts: ScanOptions) -> Self {
        Scanner { rules, opts }
    }

    /// The rules in use.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Scans every input; problems with one part are reported and the rest goes on.
    pub fn scan(&self, inputs: &[Input], progress: &Progress) -> Report {
        let mut report = Report { version: 1, ..Report::default() };
        for input in inputs {
            match input {
                Input::Stdin => self.scan_stdin(&mut report, progress),
                Input::Path(p) => self.scan_path(p, &mut report, progress),
                Input::Git(p) => self.scan_git(p, &mut report, progress),
            }
        }
        let before = report.findings.len();
        report.findings.retain(|f| !self.opts.baseline.contains(&f.fingerprint));
        report.stats.suppressed_baseline = (before - report.findings.len()) as u64;
        report.sort();
        report
    }

    /// Every blob reachable from HEAD, once, at the first commit and path that brought it in. A secret
    /// that stays in a file while other lines change is reported once, at its first commit.
    fn scan_git(&self, repo: &Path, report: &mut Report, progress: &Progress) {
        let shown = repo.display().to_string();
        let blobs = match crate::git::history(repo) {
            Ok(b) => b,
            Err(message) => return report.errors.push(ScanIssue { source: shown, message }),
        };
        let mut reader = match crate::git::BlobReader::new(repo) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("cannot run git cat-file: {e}");
                return report.errors.push(ScanIssue { source: shown, message });
            }
        };
        let mut seen: HashSet<String> = HashSet::new();
        for b in blobs.iter().filter(|b| !self.skip_path(&b.path)) {
            let source = format!("{shown}@{}:{}", b.commit.get(..12).unwrap_or(&b.commit), b.path);
            let outcome = reader
                .with_blob(&b.blob, |r| scan_stream(&self.rules, FileClass::of_path(&b.path), r, progress));
            match outcome.and_then(|o| o) {
                Ok(TextOutcome::Text { found, suppressed, bytes }) => {
                    report.stats.count_text(bytes, &suppressed);
                    for c in found {
                        let loc = Location::Commit {
                            repo: shown.clone(),
                            commit: b.commit.clone(),
                            path: b.path.clone(),
                            line: c.line,
                            end_line: c.end_line,
                            column: c.column,
                        };
                        let f = self.finding(&c, loc);
                        if seen.insert(f.fingerprint.clone()) {
                            report.findings.push(f);
                        }
                    }
                }
                Ok(TextOutcome::Binary) => report.stats.binary_files += 1,
                Err(e) => {
                    report.errors.push(ScanIssue { source, message: format!("cannot read blob: {e}") });
                    return; // the cat-file stream is out of step now
                }
            }
        }
    }

    fn skip_path(&self, path: &str) -> bool {
        self.rules.allowlist.allows_path(path) || self.opts.skip_paths.iter().any(|r| r.is_match(path))
    }

    fn scan_path(&self, path: &Path, report: &mut Report, progress: &Progress) {
        let shown = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(ScanIssue { source: shown, message: format!("cannot read: {e}") });
                return;
            }
        };
        if meta.is_dir() {
            if path.join("oci-layout").is_file() {
                self.scan_image(Blobs::Dir(path.to_owned()), &shown, None, report, progress);
            } else {
                self.scan_tree(path, report, progress);
            }
            return;
        }
        match sniff_file(path) {
            Ok(Sniffed::Tar) => self.scan_archive(path, &shown, report, progress),
            Ok(Sniffed::Compressed) => {
                match self.spool_decompressed(File::open(path), Some(meta.len()), &shown) {
                    Ok(tmp) => self.scan_spooled(tmp, &shown, report, progress),
                    Err(e) => report.errors.push(e),
                }
            }
            Ok(Sniffed::Text) => {
                let outcome = self.scan_file(path, &shown, progress);
                self.record_file(&shown, outcome, report);
            }
            Err(e) => report.errors.push(ScanIssue { source: shown, message: format!("cannot read: {e}") }),
        }
    }

    fn scan_stdin(&self, report: &mut Report, progress: &Progress) {
        let shown = "-".to_owned();
        let mut stdin = BufReader::with_capacity(64 * 1024, io::stdin());
        let head = match stdin.fill_buf() {
            Ok(h) => h.to_vec(),
            Err(e) => {
                report.errors.push(ScanIssue { source: shown, message: format!("cannot read stdin: {e}") });
                return;
            }
        };
        if is_tar_header(&head) || Compression::of_magic(&head) != Compression::None {
            // Images need random access (manifest.json may come after the layers): spool to disk.
            match self.spool_decompressed(Ok(stdin), None, &shown) {
                Ok(tmp) => self.scan_spooled(tmp, &shown, report, progress),
                Err(e) => report.errors.push(e),
            }
            return;
        }
        let outcome = FileOutcome::of(
            scan_stream(&self.rules, FileClass::CONFIG, stdin, progress),
            "cannot read stdin",
        );
        self.record_file(&shown, outcome, report);
    }

    /// Decompresses to a temporary file (images need random access), through the same bomb guard as
    /// layers: `size` (the compressed size, when known) bounds the ratio; the byte cap always applies.
    fn spool_decompressed<R: Read + Send>(
        &self,
        source: io::Result<R>,
        size: Option<u64>,
        shown: &str,
    ) -> Result<tempfile::NamedTempFile, ScanIssue> {
        let issue = |m: String| ScanIssue { source: shown.to_owned(), message: m };
        let source = source.map_err(|e| issue(format!("cannot read: {e}")))?;
        let (_, mut reader) = decompressed(source, size.unwrap_or(u64::MAX / 1024), self.opts.limits)
            .map_err(|e| issue(format!("cannot read: {e}")))?;
        let mut tmp =
            tempfile::NamedTempFile::new().map_err(|e| issue(format!("cannot create a temp file: {e}")))?;
        io::copy(&mut reader, &mut tmp).map_err(|e| issue(format!("corrupt or truncated: {e}")))?;
        Ok(tmp)
    }

    fn scan_spooled(
        &self,
        tmp: tempfile::NamedTempFile,
        shown: &str,
        report: &mut Report,
        progress: &Progress,
    ) {
        let path = tmp.path();
        match sniff_file(path) {
            Ok(Sniffed::Tar) => self.scan_archive(path, shown, report, progress),
            _ => {
                let outcome = self.scan_file(path, shown, progress);
                self.record_file(shown, outcome, report);
            }
        }
    }

    fn scan_file(&self, path: &Path, shown: &str, progress: &Progress) -> FileOutcome {
        if self.skip_path(shown) {
            return FileOutcome::Skipped;
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return FileOutcome::Error(format!("cannot read: {e}")),
        };
        FileOutcome::of(scan_stream(&self.rules, FileClass::of_path(shown), file, progress), "cannot read")
    }

    fn record_file(&self, shown: &str, outcome: FileOutcome, report: &mut Report) {
        match outcome {
            FileOutcome::Scanned(TextOutcome::Text { found, suppressed, bytes }) => {
                report.stats.count_text(bytes, &suppressed);
                for c in found {
                    let loc = Location::File {
                        path: shown.to_owned(),
                        line: c.line,
                        end_line: c.end_line,
                        column: c.column,
                    };
                    report.findings.push(self.finding(&c, loc));
                }
            }
            FileOutcome::Scanned(TextOutcome::Binary) => report.stats.binary_files += 1,
            FileOutcome::Skipped => {}
            FileOutcome::Error(message) => {
                report.errors.push(ScanIssue { source: shown.to_owned(), message })
            }
        }
    }

    fn finding(&self, c: &Candidate, location: Location) -> Finding {
        let rule = &self.rules.rules[c.rule];
        Finding::new(&rule.id, &rule.description, &rule.remediation, location, &c.secret)
    }

    fn scan_tree(&self, root: &Path, report: &mut Report, progress: &Progress) {
        let all = self.opts.all_files;
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .git_ignore(!all)
            .git_exclude(!all)
            .git_global(false)
            .ignore(!all)
            .parents(!all)
            .require_git(false)
            .filter_entry(|e| e.file_name() != ".git")
            .build();
        let mut files = Vec::new();
        for entry in walker {
            match entry {
                Ok(e) if e.file_type().is_some_and(|t| t.is_file()) => files.push(e.into_path()),
                Ok(_) => {}
                Err(e) => report
                    .errors
                    .push(ScanIssue { source: root.display().to_string(), message: e.to_string() }),
            }
        }
        files.sort();
        let outcomes = parallel(&files, self.opts.threads, |p| {
            let shown = p.display().to_string();
            let o = self.scan_file(p, &shown, progress);
            (shown, o)
        });
        for (shown, o) in outcomes {
            self.record_file(&shown, o, report);
        }
    }

    /// A tar: an image when it holds image metadata, else a plain archive of files.
    fn scan_archive(&self, path: &Path, shown: &str, report: &mut Report, progress: &Progress) {
        match Blobs::index_archive(path) {
            Ok(blobs) if blobs.is_image() => self.scan_image(blobs, shown, Some(path), report, progress),
            Ok(_) => self.scan_plain_tar(path, shown, report, progress),
            Err(e) => report.errors.push(ScanIssue {
                source: shown.to_owned(),
                message: format!("corrupt or truncated tar archive: {e}"),
            }),
        }
    }

    /// A tar that is no image: its entries are scanned as files, named `archive!/entry`.
    fn scan_plain_tar(&self, path: &Path, shown: &str, report: &mut Report, progress: &Progress) {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                report
                    .errors
                    .push(ScanIssue { source: shown.to_owned(), message: format!("cannot read: {e}") });
                return;
            }
        };
        let mut archive = tar::Archive::new(file);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => {
                report
                    .errors
                    .push(ScanIssue { source: shown.to_owned(), message: format!("not a tar: {e}") });
                return;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.errors.push(ScanIssue {
                        source: shown.to_owned(),
                        message: format!("corrupt or truncated tar archive: {e}"),
                    });
                    return;
                }
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let inner = entry.path().map(|p| image::normalise(&p.to_string_lossy())).unwrap_or_default();
            let name = format!("{shown}!/{inner}");
            if self.skip_path(&inner) {
                continue;
            }
            let scanned = scan_stream(&self.rules, FileClass::of_path(&inner), entry, progress);
            let outcome = FileOutcome::of(scanned, "corrupt or truncated entry");
            self.record_file(&name, outcome, report);
        }
    }

    /// `archive` is the tar the blobs come from: a tar that merely holds a file named `index.json` or
    /// `manifest.json` but no image is scanned as a plain tar instead.
    fn scan_image(
        &self,
        blobs: Blobs,
        shown: &str,
        archive: Option<&Path>,
        report: &mut Report,
        progress: &Progress,
    ) {
        let (images, problems) = image::discover(&blobs);
        let nothing_image_like = images.is_empty() && problems.is_empty() && !blobs.has("oci-layout");
        if let (true, Some(tar)) = (nothing_image_like, archive) {
            self.scan_plain_tar(tar, shown, report, progress);
            return;
        }
        for p in problems {
            report.errors.push(ScanIssue { source: shown.to_owned(), message: p });
        }
        if images.is_empty() {
            report.errors.push(ScanIssue {
                source: shown.to_owned(),
                message: "no image found in this archive (no usable manifest.json or index.json)".to_owned(),
            });
            return;
        }
        // Each distinct layer blob is streamed once, in parallel, however many images share it.
        let mut blobs_needed: Vec<String> = Vec::new();
        for img in &images {
            for (b, _) in &img.layers {
                if !blobs_needed.contains(b) {
                    blobs_needed.push(b.clone());
                }
            }
        }
        let scans = parallel(&blobs_needed, self.opts.threads, |b| {
            let mut scan = image::scan_layer(&blobs, b, &self.rules, self.opts.limits, progress);
            scan.found.retain(|(path, _)| !self.opts.skip_paths.iter().any(|r| r.is_match(path)));
            scan
        });
        let by_blob: HashMap<&str, &LayerScan> =
            blobs_needed.iter().map(String::as_str).zip(scans.iter()).collect();
        report.stats.layers += scans.len() as u64;
        for s in &scans {
            report.stats.files += s.files;
            report.stats.bytes += s.bytes;
            report.stats.binary_files += s.binary;
            report.stats.suppressed_inline += s.suppressed_inline;
            report.stats.suppressed_test_data += s.suppressed_test_data;
        }
        for img in &images {
            report.stats.images += 1;
            match image::scan_config(&blobs, img, &self.rules) {
                Ok(found) => {
                    for f in found {
                        let loc = Location::Config {
                            image: shown.to_owned(),
                            image_ref: img.name.clone(),
                            config_digest: img.config_digest.clone(),
                            field: f.field,
                        };
                        report.findings.push(self.finding(&f.candidate, loc));
                    }
                }
                Err(e) => report.errors.push(ScanIssue { source: format!("{shown} config"), message: e }),
            }
            let layers: Vec<&LayerScan> =
                img.layers.iter().filter_map(|(b, _)| by_blob.get(b.as_str()).copied()).collect();
            for (i, ((_, digest), scan)) in img.layers.iter().zip(&layers).enumerate() {
                if let Some(e) = &scan.error {
                    report.errors.push(ScanIssue {
                        source: format!("{shown} layer {} ({digest})", i + 1),
                        message: e.clone(),
                    });
                }
                for (path, c) in &scan.found {
                    let loc = Location::Layer {
                        image: shown.to_owned(),
                        image_ref: img.name.clone(),
                        layer: i + 1,
                        layer_digest: digest.clone(),
                        path: path.clone(),
                        line: c.line,
                        end_line: c.end_line,
                        column: c.column,
                        presence: image::presence(&layers, i, path),
                    };
                    report.findings.push(self.finding(c, loc));
                }
            }
        }
    }
}

enum Sniffed {
    Tar,
    Compressed,
    Text,
}

fn is_tar_header(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

fn sniff_file(path: &Path) -> io::Result<Sniffed> {
    let mut head = [0u8; 512];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    Ok(if is_tar_header(head) {
        Sniffed::Tar
    } else if Compression::of_magic(head) != Compression::None {
        Sniffed::Compressed
    } else {
        Sniffed::Text
    })
}
