//! Git history: every blob reachable from HEAD, each with the first commit (oldest first, in topological
//! order) that brought it in at its path. Read through the `git` command (`rev-list`, `diff-tree
//! --stdin`, `cat-file --batch`), so no second implementation of git's object format is needed and
//! memory stays at one blob header plus the set of blob ids seen.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A blob to scan and where it first appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryBlob {
    /// The commit that added or changed the file to this content.
    pub commit: String,
    /// The file's path in that commit.
    pub path: String,
    /// The blob's object id.
    pub blob: String,
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    // The repository's own config must not run programs of its choosing while we read it
    // (`core.fsmonitor`, textconv and diff drivers are not used by these plumbing commands).
    c.arg("-C").arg(repo).args(["-c", "core.fsmonitor=false"]);
    c
}

/// Turns the `-z` output of `git diff-tree --stdin -r --root -m` into blobs, keeping the first place
/// of each blob id. Records: a commit header (`<id>` or `<id> (from <parent>)`), then entries
/// `:<old mode> <new mode> <old id> <new id> <status>` each followed by a path.
pub fn parse_diff_tree(out: &[u8], seen: &mut HashSet<String>) -> Vec<HistoryBlob> {
    let mut blobs = Vec::new();
    let mut commit = String::new();
    let mut fields = out.split(|&b| b == 0).filter(|f| !f.is_empty());
    while let Some(field) = fields.next() {
        let text = String::from_utf8_lossy(field);
        let Some(entry) = text.strip_prefix(':') else {
            commit = text.split(' ').next().unwrap_or_default().to_owned();
            continue;
        };
        let Some(path) = fields.next() else { break };
        let parts: Vec<&str> = entry.split(' ').collect();
        let (Some(new_mode), Some(new_id), Some(status)) = (parts.get(1), parts.get(3), parts.get(4)) else {
            continue;
        };
        // Regular files only (not symlinks 120000 or submodules 160000), and not deletions.
        if !new_mode.starts_with("100") || status.starts_with('D') {
            continue;
        }
        if seen.insert((*new_id).to_owned()) {
            blobs.push(HistoryBlob {
                commit: commit.clone(),
                path: String::from_utf8_lossy(path).into_owned(),
                blob: (*new_id).to_owned(),
            });
        }
    }
    blobs
}

/// Every blob reachable from HEAD of `repo`, each at its first commit and path, oldest first.
pub fn history(repo: &Path) -> Result<Vec<HistoryBlob>, String> {
    let revs = git(repo)
        .args(["rev-list", "--reverse", "--topo-order", "HEAD"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run git: {e} (is git installed?)"))?;
    if !revs.status.success() {
        return Err(format!(
            "not a git repository with commits: {}",
            String::from_utf8_lossy(&revs.stderr).trim()
        ));
    }
    let mut child = git(repo)
        .args(["diff-tree", "--stdin", "-r", "--root", "-m", "-z", "--no-renames", "--no-abbrev"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run git diff-tree: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("git diff-tree has no stdin")?;
    // Feed the commit list from another thread, so neither pipe fills up while the other waits.
    let feeder = std::thread::spawn(move || stdin.write_all(&revs.stdout));
    let mut out = Vec::new();
    let read = child.stdout.take().ok_or("git diff-tree has no stdout")?.read_to_end(&mut out);
    let fed = feeder.join().map_err(|_| "the thread feeding git diff-tree panicked".to_owned())?;
    let status = child.wait().map_err(|e| format!("git diff-tree: {e}"))?;
    read.map_err(|e| format!("reading git diff-tree: {e}"))?;
    fed.map_err(|e| format!("writing to git diff-tree: {e}"))?;
    if !status.success() {
        return Err(format!("git diff-tree failed ({status})"));
    }
    Ok(parse_diff_tree(&out, &mut HashSet::new()))
}

/// Reads blobs one at a time through `git cat-file --batch`.
pub struct BlobReader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl BlobReader {
    /// Starts `git cat-file --batch` in `repo`.
    pub fn new(repo: &Path) -> io::Result<Self> {
        let mut child = git(repo)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("git cat-file has no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("git cat-file has no stdout"))?;
        Ok(BlobReader { child, stdin, stdout: BufReader::new(stdout) })
    }

    /// Hands the content of blob `id` to `f` as a reader (which need not read it all).
    pub fn with_blob<T>(&mut self, id: &str, f: impl FnOnce(&mut dyn Read) -> T) -> io::Result<T> {
        writeln!(self.stdin, "{id}")?;
        self.stdin.flush()?;
        let mut header = String::new();
        self.stdout.read_line(&mut header)?;
        // `<id> blob <size>`, or `<id> missing`.
        let mut parts = header.split_whitespace();
        let (Some(_), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(io::Error::other(format!("object {id} is missing from the repository")));
        };
        if kind != "blob" {
            return Err(io::Error::other(format!("object {id} is a {kind}, not a blob")));
        }
        let size: u64 =
            size.parse().map_err(|_| io::Error::other(format!("bad size in `{}`", header.trim())))?;
        let mut body = (&mut self.stdout).take(size);
        let result = f(&mut body);
        // Skip what the scan did not read (binary files stop early) and the newline after the blob.
        io::copy(&mut body, &mut io::sink())?;
        let mut newline = [0u8; 1];
        self.stdout.read_exact(&mut newline)?;
        Ok(result)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        // Closing stdin ends cat-file; wait so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_tree_output_becomes_first_places_of_blobs() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let z = "0".repeat(40);
        let c1 = "1".repeat(40);
        let c2 = "2".repeat(40);
        let out = format!(
            "{c1}\0:000000 100644 {z} {a} A\0dir/a b.env\0:000000 120000 {z} {b} A\0link\0\
             {c2} (from {c1})\0:100644 100644 {a} {b} M\0dir/a b.env\0:100644 000000 {a} {z} D\0gone\0\
             :000000 100755 {z} {a} A\0copy.sh\0"
        );
        let blobs = parse_diff_tree(out.as_bytes(), &mut HashSet::new());
        let got: Vec<(&str, &str, &str)> =
            blobs.iter().map(|b| (b.commit.as_str(), b.path.as_str(), b.blob.as_str())).collect();
        assert_eq!(got, [(c1.as_str(), "dir/a b.env", a.as_str()), (c2.as_str(), "dir/a b.env", b.as_str())]);
        // Garbage never panics.
        let _ = parse_diff_tree(b":\0:x\0\0\0:1 2 3\0", &mut HashSet::new());
    }
}
