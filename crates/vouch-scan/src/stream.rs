//! Streaming input: text read in bounded chunks of whole lines (giant lines are cut into windows), binary
//! detection, layer decompression chosen by magic bytes, and the decompression-bomb guard.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::detect::{Candidate, FileClass, Suppressed, TextScanner};
use crate::rules::RuleSet;

/// Bytes read per chunk; a line longer than this is scanned in windows of this size.
pub const CHUNK: usize = 256 * 1024;
/// Consecutive windows of one giant line overlap by this much, so a secret on a window boundary is
/// still seen whole (the duplicate from the overlap is dropped). Longer than any token a rule matches.
const WINDOW_OVERLAP: usize = 4096;
/// A NUL byte in the first this-many bytes marks a file as binary.
const BINARY_PROBE: usize = 8000;

/// Counters the progress display reads while workers scan.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of text scanned.
    pub bytes: AtomicU64,
    /// Files scanned.
    pub files: AtomicU64,
}

/// Result of scanning one text stream.
#[derive(Debug)]
pub enum TextOutcome {
    /// Scanned: findings and how many a `vouch:allow` comment dropped.
    Text {
        /// The findings.
        found: Vec<Candidate>,
        /// Dropped by `vouch:allow` or as test data.
        suppressed: Suppressed,
        /// Bytes read.
        bytes: u64,
    },
    /// Skipped: the content is binary.
    Binary,
}

/// Scans a text stream chunk by chunk; memory stays at one chunk whatever the size of the input.
pub fn scan_stream<R: Read>(
    rules: &RuleSet,
    class: FileClass,
    mut reader: R,
    progress: &Progress,
) -> io::Result<TextOutcome> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0usize;
    let mut scanner = TextScanner::for_file(rules, class);
    let mut first = true;
    let mut total = 0u64;
    loop {
        let mut eof = false;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if first {
            first = false;
            if memchr::memchr(0, &buf[..filled.min(BINARY_PROBE)]).is_some() {
                return Ok(TextOutcome::Binary);
            }
        }
        total += filled as u64;
        progress.bytes.fetch_add(filled as u64, Ordering::Relaxed);
        if eof {
            scanner.feed(&buf[..filled], false);
            break;
        }
        match memchr::memrchr(b'\n', &buf[..filled]) {
            Some(p) => {
                scanner.feed(&buf[..=p], false);
                buf.copy_within(p + 1..filled, 0);
                filled -= p + 1;
                // The carried-over bytes are counted again with the next read; undo that here.
                total -= filled as u64;
                progress.bytes.fetch_sub(filled as u64, Ordering::Relaxed);
            }
            None => {
                scanner.feed(&buf[..filled], true);
                // Carry the window's tail into the next one, starting on a character boundary.
                let mut from = filled.saturating_sub(WINDOW_OVERLAP);
                while from < filled && (buf[from] & 0xc0) == 0x80 {
                    from += 1;
                }
                let keep = filled - from;
                buf.copy_within(from..filled, 0);
                scanner.rewind_columns(keep);
                filled = keep;
                total -= keep as u64;
                progress.bytes.fetch_sub(keep as u64, Ordering::Relaxed);
            }
        }
    }
    progress.files.fetch_add(1, Ordering::Relaxed);
    let (found, suppressed) = scanner.finish();
    Ok(TextOutcome::Text { found, suppressed, bytes: total })
}

/// Limits on decompressed layer data, so a crafted layer cannot run a scan forever.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes one layer may decompress to.
    pub max_layer_bytes: u64,
    /// Largest decompressed/compressed ratio allowed once `ratio_floor` bytes have come out.
    pub max_ratio: u64,
    /// Output below this size is never judged by ratio (small layers compress very well).
    pub ratio_floor: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Real layers compress text 3-10x; 250x past 64 MiB only happens with crafted input.
        Limits { max_layer_bytes: 64 << 30, max_ratio: 250, ratio_floor: 64 << 20 }
    }
}

/// Counts decompressed bytes and fails once a [`Limits`] bound is crossed.
pub struct BombGuard<R> {
    inner: R,
    out: u64,
    compressed: u64,
    limits: Limits,
}

impl<R: Read> BombGuard<R> {
    /// Guards `inner`, whose input was `compressed` bytes.
    pub fn new(inner: R, compressed: u64, limits: Limits) -> Self {
        BombGuard { inner, out: 0, compressed: compressed.max(1), limits }
    }
}

impl<R: Read> Read for BombGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        if self.out > self.limits.max_layer_bytes {
            return Err(io::Error::other(format!(
                "decompresses to more than {} bytes (--max-layer-bytes); not scanned further",
                self.limits.max_layer_bytes
            )));
        }
        if self.out > self.limits.ratio_floor && self.out / self.compressed > self.limits.max_ratio {
            return Err(io::Error::other(format!(
                "decompression ratio above {}:1, like a decompression bomb; not scanned further",
                self.limits.max_ratio
            )));
        }
        Ok(n)
    }
}

/// Compression of a stream, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// Anything else is read as it is.
    None,
}

impl Compression {
    /// The compression whose magic bytes `head` starts with.
    pub fn of_magic(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Looks at the first bytes without consuming them.
pub fn sniff<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    Ok(Compression::of_magic(reader.fill_buf()?))
}

/// Wraps `reader` in the decoder its magic bytes call for, behind the bomb guard.
pub fn decompressed<'a, R: Read + Send + 'a>(
    reader: R,
    compressed_size: u64,
    limits: Limits,
) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let kind = sniff(&mut buffered)?;
    let inner: Box<dyn Read + Send + 'a> = match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(ZstdFrames { source: Some(buffered), current: None }),
        Compression::None => return Ok((kind, Box::new(buffered))),
    };
    Ok((kind, Box::new(BombGuard::new(inner, compressed_size, limits))))
}

/// A zstd stream of one or more frames (ruzstd's decoder reads one frame).
struct ZstdFrames<R: BufRead> {
    source: Option<R>,
    current: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(dec) = self.current.as_mut() {
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // Frame done: continue with the next one, if any.
                let dec = self.current.take().ok_or_else(|| io::Error::other("zstd state"))?;
                self.source = Some(dec.into_inner());
            }
            let Some(mut src) = self.source.take() else { return Ok(0) };
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let dec = ruzstd::decoding::StreamingDecoder::new(src)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad zstd frame: {e}")))?;
            self.current = Some(dec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giant_lines_are_windowed_and_later_lines_keep_their_numbers() {
        let rules = RuleSet::default_rules().unwrap();
        let mut text = "x".repeat(CHUNK * 2 + 17).into_bytes();
        text.extend_from_slice(
            b" STRIPE=sk_live_abcdefghijklmnopqrstuvwx\nok\nk=ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345\n",
        );
        let TextOutcome::Text { found, bytes, .. } =
            scan_stream(&rules, FileClass::CONFIG, &text[..], &Progress::default()).unwrap()
        else {
            panic!("binary?")
        };
        assert_eq!(bytes, text.len() as u64);
        let lines: Vec<u64> = found.iter().map(|c| c.line).collect();
        assert_eq!(lines, vec![1, 3], "{found:?}");
        assert_eq!(found[0].column, CHUNK * 2 + 17 + 9);
    }

    #[test]
    fn a_secret_on_a_window_boundary_of_a_giant_line_is_found_once() {
        let rules = RuleSet::default_rules().unwrap();
        let token = "ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345";
        for offset in [10, 20, 30] {
            // The token starts `offset` bytes before the end of the first window.
            let mut text = "é".repeat((CHUNK - offset) / 2).into_bytes();
            text.resize(CHUNK - offset, b'x');
            text.extend_from_slice(format!(" {token} ").as_bytes());
            text.extend_from_slice(&vec![b'y'; CHUNK]);
            text.push(b'\n');
            let TextOutcome::Text { found, bytes, .. } =
                scan_stream(&rules, FileClass::CONFIG, &text[..], &Progress::default()).unwrap()
            else {
                panic!("binary?")
            };
            assert_eq!(bytes, text.len() as u64);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].secret, token);
        }
    }

    #[test]
    fn nul_bytes_mean_binary() {
        let rules = RuleSet::default_rules().unwrap();
        let data = b"\x7fELF\0\0\0 ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345";
        assert!(matches!(
            scan_stream(&rules, FileClass::CONFIG, &data[..], &Progress::default()).unwrap(),
            TextOutcome::Binary
        ));
    }

    #[test]
    fn bomb_guard_stops_runaway_ratios() {
        let zeros = vec![0u8; 8 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
        let packed = gz.finish().unwrap();
        let limits = Limits { max_layer_bytes: 1 << 40, max_ratio: 100, ratio_floor: 1 << 20 };
        let (kind, mut r) = decompressed(&packed[..], packed.len() as u64, limits).unwrap();
        assert_eq!(kind, Compression::Gzip);
        let err = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }
}
