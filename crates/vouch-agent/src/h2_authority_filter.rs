//! Interoperability with gRPC C-core clients (Python, Ruby, C++ — including py-spiffe) on the Unix
//! socket.
//!
//! Since gRPC 1.57 those clients send the percent-encoded socket path as the HTTP/2 `:authority`
//! (for example `run%2Fvouch%2Fapi.sock`). The HTTP/2 stack vouch uses (h2) rejects such a request
//! with `RST_STREAM(PROTOCOL_ERROR)` because `%` is not allowed in a host. The authority means nothing
//! on a Unix socket, so the agent rewrites an invalid one to `localhost` before h2 sees it.
//!
//! How: the bytes from the client pass through a frame parser. Request header blocks (HEADERS plus
//! CONTINUATION frames) are decoded with HPACK, keeping the client's dynamic table in step, and
//! re-encoded as literal fields without indexing, so the re-encoded side shares no table state with
//! h2. Every other frame, and the whole direction towards the client, is forwarded untouched.
//!
//! (The name says what it is: a filter of HTTP/2 frames for the `:authority` pseudo-header. In SPIFFE
//! code "authority" alone would read as the CA.)
//!
//! This module exists only for two upstream issues and can be deleted when either is fixed and the
//! fix is in the versions vouch uses: h2 refusing such authorities (hyperium/h2#487), and gRPC
//! C-core sending the socket path as `:authority` on Unix sockets (grpc/grpc#38142). The py-spiffe
//! test in the agent's integration tests shows whether it is still needed.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest maximum frame size every HTTP/2 peer accepts; re-encoded blocks are split to fit.
const MAX_FRAME: usize = 16_384;
/// Largest frame payload accepted: the agent's HTTP/2 server advertises no larger frames than the
/// protocol's default (16 KiB), so an honest client never sends more.
const MAX_FRAME_PAYLOAD: usize = MAX_FRAME;
/// Largest decoded header list, counted as HTTP/2 does (name + value + 32 per field, RFC 9113
/// section 6.5.2): what the agent's HTTP/2 server advertises (16 KiB), so nothing the server would
/// accept is refused here.
pub const MAX_HEADER_LIST: usize = 16 * 1024;
/// Largest encoded header block (HEADERS and CONTINUATION fragments together). Every field costs at
/// least one encoded byte and 32 bytes of list size, and literals are at most a few bytes longer
/// encoded than decoded, so a block within the list bound is far below this.
const MAX_BLOCK: usize = 2 * MAX_HEADER_LIST;
/// Largest HPACK dynamic table a client may ask for: the protocol's default, which the agent's
/// server never raises. Without this bound a table-size update to 2^28 lets one literal be
/// referenced thousands of times, each reference decoded into a fresh copy (a decompression bomb).
pub const MAX_TABLE_SIZE: usize = 4096;

/// A header block whose CONTINUATION frames are still arriving.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Where the filter is in the client's byte stream.
enum Stage {
    /// Reading the 24-byte connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: everything passes through for the server to refuse.
    Passthrough,
}

/// The filter of one connection's client-to-server direction, fed bytes as they arrive. It keeps
/// no more than one incomplete frame of input (at most 9 + [`MAX_FRAME_PAYLOAD`] bytes) and one
/// header block being assembled (at most [`MAX_BLOCK`]).
pub struct Filter {
    stage: Stage,
    decoder: crate::hpack::Decoder,
    pending: Option<PendingBlock>,
    requests: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Self { stage: Stage::Preface, decoder: client_decoder(), pending: None, requests: 0 }
    }
}

impl Filter {
    /// Whether a complete header block (a request) has passed.
    pub fn request_seen(&self) -> bool {
        self.requests > 0 || matches!(self.stage, Stage::Passthrough)
    }

    /// Consumes what it can of `input` (the preface, whole frames) and appends what the server
    /// should receive to `out`; an incomplete frame stays in `input` for the next call. An error
    /// means the connection must be dropped.
    pub fn feed(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut used = 0;
        let result = self.feed_from(input, &mut used, out);
        input.drain(..used);
        result
    }

    fn feed_from(&mut self, input: &[u8], used: &mut usize, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let rest = &input[*used..];
            match self.stage {
                Stage::Passthrough => {
                    out.extend_from_slice(rest);
                    *used = input.len();
                    return Ok(());
                }
                Stage::Preface => {
                    if rest.len() < PREFACE.len() {
                        // Not even the start of a preface: pass it on and let the server refuse it.
                        if !PREFACE.starts_with(rest) {
                            self.stage = Stage::Passthrough;
                            continue;
                        }
                        return Ok(());
                    }
                    out.extend_from_slice(&rest[..PREFACE.len()]);
                    *used += PREFACE.len();
                    self.stage =
                        if rest[..PREFACE.len()] == PREFACE[..] { Stage::Frames } else { Stage::Passthrough };
                }
                Stage::Frames => {
                    let Some(head) = rest.get(..9) else { return Ok(()) };
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    if len > MAX_FRAME_PAYLOAD {
                        return Err(invalid("frame larger than the server allows"));
                    }
                    let Some(payload) = rest.get(9..9 + len) else { return Ok(()) };
                    let head: [u8; 9] = head.try_into().map_err(|_| invalid("short frame header"))?;
                    self.frame(&head, payload, out)?;
                    *used += 9 + len;
                }
            }
        }
    }

    /// Handles one whole frame.
    fn frame(&mut self, head: &[u8; 9], payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match kind {
            HEADERS => {
                if self.pending.is_some() {
                    return Err(invalid("HEADERS inside an unfinished header block"));
                }
                let mut start = 0;
                let mut end = payload.len();
                if flags & PADDED != 0 {
                    let pad = *payload.first().ok_or_else(|| invalid("empty padded frame"))? as usize;
                    start = 1;
                    end =
                        end.checked_sub(pad).filter(|e| *e >= start).ok_or_else(|| invalid("bad padding"))?;
                }
                let priority = if flags & PRIORITY != 0 {
                    // Taken from the frame less its padding: padding that overlaps the priority
                    // fields is malformed (found by fuzzing).
                    let p: [u8; 5] = payload
                        .get(start..end)
                        .and_then(|s| s.get(..5))
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| invalid("short priority"))?;
                    start += 5;
                    Some(p)
                } else {
                    None
                };
                let fragment = payload.get(start..end).ok_or_else(|| invalid("bad HEADERS frame"))?;
                if fragment.len() > MAX_BLOCK {
                    return Err(invalid("header block too large"));
                }
                self.pending = Some(PendingBlock {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                });
            }
            CONTINUATION => match &mut self.pending {
                Some(p) if p.stream == stream => {
                    if p.fragment.len() + payload.len() > MAX_BLOCK {
                        return Err(invalid("header block too large"));
                    }
                    p.fragment.extend_from_slice(payload);
                }
                _ => return Err(invalid("unexpected CONTINUATION")),
            },
            _ => {
                if self.pending.is_some() {
                    return Err(invalid("frame inside an unfinished header block"));
                }
                out.extend_from_slice(head);
                out.extend_from_slice(payload);
                return Ok(());
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(p) = self.pending.take() {
                let rewritten = rewrite_block(&mut self.decoder, &p.fragment)?;
                write_block(out, p.stream, p.end_stream, p.priority, &rewritten);
                self.requests += 1;
            }
        }
        Ok(())
    }
}

/// Whether `value` is acceptable to h2 as an authority.
fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]@!$&'()*+,;=".contains(b))
}

/// Appends an HPACK integer with an `n`-bit prefix (RFC 7541, section 5.1).
fn encode_int(out: &mut Vec<u8>, first_byte_flags: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Encodes headers as literal fields without indexing, with literal names and no Huffman coding
/// (RFC 7541, section 6.2.2).
pub fn encode_literal_block(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        encode_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        encode_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A decoder of client header blocks, its dynamic table bounded by [`MAX_TABLE_SIZE`].
pub fn client_decoder() -> crate::hpack::Decoder {
    crate::hpack::Decoder::new(MAX_TABLE_SIZE)
}

/// Decodes a client header block, fixes `:authority`, and re-encodes it. A block whose decoded list
/// exceeds [`MAX_HEADER_LIST`] is refused as soon as the bound is passed: fields are copied out only
/// while within it, so however many table references a block holds, at most that much is allocated.
pub fn rewrite_block(decoder: &mut crate::hpack::Decoder, block: &[u8]) -> io::Result<Vec<u8>> {
    let mut headers = Vec::new();
    let mut list_size = 0usize;
    decoder
        .decode(block, |name, value| {
            // Fixed and counted as forwarded: an invalid authority goes out as `localhost`, which can
            // be longer (found by fuzzing: short invalid authorities pushed a list at the bound past
            // it, so the server was sent more than it advertises).
            let value =
                if name == b":authority" && !valid_authority(value) { &b"localhost"[..] } else { value };
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size <= MAX_HEADER_LIST {
                headers.push((name.to_vec(), value.to_vec()));
            }
        })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad HPACK block: {e}")))?;
    if list_size > MAX_HEADER_LIST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("header list larger than {MAX_HEADER_LIST} bytes"),
        ));
    }
    Ok(encode_literal_block(&headers))
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// Appends a header block as HEADERS plus as many CONTINUATION frames as needed.
fn write_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, priority: Option<[u8; 5]>, block: &[u8]) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(MAX_FRAME - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    out.extend_from_slice(&frame_header(prio_len + first.len(), HEADERS, flags, stream));
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let (chunk, tail) = rest.split_at(n);
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        out.extend_from_slice(&frame_header(n, CONTINUATION, flags, stream));
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

/// Copies an HTTP/2 byte stream from a client to the server side through a [`Filter`], for tests
/// and fuzzing (the agent runs the filter inside its connection type instead, with no task of its
/// own). Returns when the client closes; an error means the connection should be dropped. The
/// preface and the first complete header block must arrive within `first_request` (an error of
/// kind `TimedOut` otherwise).
pub async fn filter_client_to_server<R, W>(
    mut r: R,
    mut w: W,
    first_request: std::time::Duration,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + first_request;
    let mut filter = Filter::default();
    let (mut input, mut out) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 9 + MAX_FRAME_PAYLOAD];
    loop {
        let read = if filter.request_seen() {
            r.read(&mut chunk).await?
        } else {
            tokio::time::timeout_at(deadline, r.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no complete first request in time"))??
        };
        if read == 0 {
            // An incomplete frame at the end is dropped with the connection.
            return w.shutdown().await;
        }
        input.extend_from_slice(&chunk[..read]);
        // What was filtered before a bad frame still goes out, as it would have on the wire.
        let fed = filter.feed(&mut input, &mut out);
        w.write_all(&out).await?;
        out.clear();
        fed?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first-request deadline no test input reaches.
    const SOON: std::time::Duration = std::time::Duration::from_secs(60);

    #[tokio::test]
    async fn a_client_that_sends_no_request_in_time_is_dropped() {
        let (client, server) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(200);
        let err = filter_client_to_server(server, &mut Vec::new(), limit).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < limit * 10);
        drop(client);
        // A preface alone (then silence) is no request either.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(PREFACE).await.unwrap();
        let err = filter_client_to_server(server, &mut Vec::new(), limit).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // After a first request, silence is allowed: the deadline is gone.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &encode_literal_block(&[(b":path".to_vec(), b"/".to_vec())]),
        ));
        client.write_all(&input).await.unwrap();
        let mut out = Vec::new();
        let filter = filter_client_to_server(server, &mut out, limit);
        assert!(tokio::time::timeout(limit * 3, filter).await.is_err(), "still waiting for the client");
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = frame_header(payload.len(), kind, flags, stream).to_vec();
        v.extend_from_slice(payload);
        v
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    /// Kind, flags, stream, payload.
    type Frame = (u8, u8, u32, Vec<u8>);

    /// Parses frames back and decodes every header block with a fresh decoder.
    fn decode_output(bytes: &[u8]) -> (Vec<Headers>, Vec<Frame>) {
        let mut blocks = Vec::new();
        let mut frames = Vec::new();
        let mut dec = loona_hpack::Decoder::new();
        let mut rest = &bytes[24..];
        let mut block = Vec::new();
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = rest[9..9 + len].to_vec();
            rest = &rest[9 + len..];
            if kind == HEADERS || kind == CONTINUATION {
                let start = if kind == HEADERS && flags & PRIORITY != 0 { 5 } else { 0 };
                block.extend_from_slice(&payload[start..]);
                if flags & END_HEADERS != 0 {
                    blocks.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            frames.push((kind, flags, stream, payload));
        }
        (blocks, frames)
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        filter_client_to_server(&input[..], &mut out, SOON).await.unwrap();
        out
    }

    #[tokio::test]
    async fn rewrites_percent_encoded_authority_and_keeps_the_rest() {
        let mut enc = loona_hpack::Encoder::new();
        let req = |path: &str, auth: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (b":authority".to_vec(), auth.as_bytes().to_vec()),
                (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
            ]
        };
        let r1 = req("/SpiffeWorkloadAPI/FetchX509SVID", "run%2Fvouch%2Fapi.sock");
        let r2 = req("/SpiffeWorkloadAPI/FetchJWTSVID", "run%2Fvouch%2Fapi.sock");
        // The encoder indexes fields, so the second block refers to the first one's table entries:
        // the filter must keep the client's table in step.
        let b1 = enc.encode(r1.iter().map(|(n, v)| (&n[..], &v[..])));
        let b2 = enc.encode(r2.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // First block split over HEADERS + CONTINUATION, with padding.
        let (h, c) = b1.split_at(b1.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(h);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
        let out = run(input.clone()).await;
        assert_eq!(&out[..24], PREFACE);
        let (blocks, frames) = decode_output(&out);
        assert_eq!(blocks.len(), 2);
        for (block, want) in blocks.iter().zip([&r1, &r2]) {
            let mut expected = want.clone();
            expected[3].1 = b"localhost".to_vec();
            assert_eq!(block, &expected);
        }
        let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|(k, f, s, _)| (*k, *f, *s)).collect();
        assert_eq!(
            kinds,
            [
                (0x4, 0, 0),
                (HEADERS, END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_HEADERS | END_STREAM, 3)
            ]
        );
        assert_eq!(frames[2].3, b"\0\0\0\0\0", "DATA untouched");

        // Fed a byte at a time, as a slow client sends it, the filter writes the same bytes.
        let (mut filter, mut pending, mut trickled) = (Filter::default(), Vec::new(), Vec::new());
        for b in &input {
            pending.push(*b);
            filter.feed(&mut pending, &mut trickled).unwrap();
            assert!(pending.len() <= 9 + MAX_FRAME_PAYLOAD);
        }
        assert!(pending.is_empty() && filter.request_seen());
        assert_eq!(trickled, out);
    }

    #[tokio::test]
    async fn valid_authorities_are_kept_and_big_blocks_are_split() {
        let mut enc = loona_hpack::Encoder::new();
        let big = "x".repeat(12_000);
        let headers = [
            (b":authority".to_vec(), b"localhost:8080".to_vec()),
            (b"x-big".to_vec(), big.as_bytes().to_vec()),
        ];
        let block = enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS | PRIORITY,
            5,
            &[[0, 0, 0, 0, 16].as_slice(), &block].concat(),
        ));
        let out = run(input).await;
        let (blocks, frames) = decode_output(&out);
        assert_eq!(blocks[0], headers.to_vec());
        assert_eq!(frames[0].1 & PRIORITY, PRIORITY);
        // A block bigger than one frame goes out as HEADERS + CONTINUATION frames.
        let block = encode_literal_block(&[(b"x-big".to_vec(), vec![b'y'; 40_000])]);
        let mut out = PREFACE.to_vec();
        write_block(&mut out, 5, true, Some([0, 0, 0, 0, 16]), &block);
        let (blocks, frames) = decode_output(&out);
        assert_eq!(blocks[0], [(b"x-big".to_vec(), vec![b'y'; 40_000])]);
        assert!(frames.len() >= 3, "split over CONTINUATION frames");
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames[0].1 & (PRIORITY | END_STREAM), PRIORITY | END_STREAM);
        assert_eq!(frames.last().unwrap().1, END_HEADERS);
    }

    /// An HPACK integer with an `n`-bit prefix and `flags`, for hand-made blocks.
    fn int(flags: u8, n: u8, value: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_int(&mut v, flags, n, value);
        v
    }

    #[tokio::test]
    async fn hpack_bombs_are_refused_before_they_allocate() {
        // The reported attack: a table-size update to 2^28, a 200 KiB literal indexed into the table,
        // then thousands of references to it (1.6 GB decoded from 209 KiB).
        let mut bomb = int(0x20, 5, 1 << 28);
        bomb.extend([0x40]);
        bomb.extend(int(0, 7, 3));
        bomb.extend(b"x-a");
        bomb.extend(int(0, 7, 200 * 1024));
        bomb.extend(vec![b'a'; 200 * 1024]);
        bomb.extend(vec![0x80 | 62; 8000]);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in bomb.chunks(MAX_FRAME).enumerate() {
            let (kind, flags) = if i == 0 { (HEADERS, 0) } else { (CONTINUATION, 0) };
            input.extend(frame(kind, flags, 1, chunk));
        }
        let err = filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.unwrap_err();
        assert!(err.to_string().contains("header block too large"), "{err}");

        // The same within the block bound: a table-size update past the protocol default is refused.
        let mut d = client_decoder();
        let err = rewrite_block(&mut d, &int(0x20, 5, MAX_TABLE_SIZE + 1)).unwrap_err();
        assert!(err.to_string().contains("bad HPACK block"), "{err}");

        // Within the table bound: a 4,000-byte field referenced 100 times is 400 KB decoded from 4 KB
        // encoded; refused once the list passes 16 KiB, after at most that much was copied.
        let mut d = client_decoder();
        let mut block = vec![0x40];
        block.extend(int(0, 7, 3));
        block.extend(b"x-a");
        block.extend(int(0, 7, 4000 - 3 - 32));
        block.extend(vec![b'a'; 4000 - 3 - 32]);
        block.extend(vec![0x80 | 62; 100]);
        assert!(block.len() < MAX_FRAME);
        let err = rewrite_block(&mut d, &block).unwrap_err();
        assert!(err.to_string().contains("header list larger than 16384 bytes"), "{err}");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert!(
            filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.is_err(),
            "through the filter too"
        );

        // Four references fit (5 fields of 4,000 bytes would not): within the bound all is kept.
        let mut d = client_decoder();
        let mut ok = block[..block.len() - 100].to_vec();
        ok.extend([0x80 | 62; 3]);
        let headers =
            rewrite_block(&mut d, &ok).map(|b| loona_hpack::Decoder::new().decode(&b).unwrap()).unwrap();
        assert_eq!(headers.len(), 4);
    }

    #[test]
    fn the_list_bound_counts_the_rewritten_authority() {
        // Found by fuzzing: an empty authority (10 + 0 + 32 bytes) in a list exactly at the bound
        // went out as `localhost`, 9 bytes past what the server advertises.
        let fields = |authority: &str, pad: usize| {
            let big = vec![b'v'; MAX_HEADER_LIST - 42 - 35 - pad];
            encode_literal_block(&[(b":authority".to_vec(), authority.into()), (b"x-a".to_vec(), big)])
        };
        let err = rewrite_block(&mut client_decoder(), &fields("", 0)).unwrap_err();
        assert!(err.to_string().contains("header list larger than 16384 bytes"), "{err}");
        // With room for `localhost` it passes, and what goes out is exactly at the bound.
        let out = rewrite_block(&mut client_decoder(), &fields("", 9)).unwrap();
        let headers = loona_hpack::Decoder::new().decode(&out).unwrap();
        assert_eq!(headers[0], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>(), MAX_HEADER_LIST);
    }

    #[tokio::test]
    async fn protocol_violations_drop_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"x"));
        let mut out = Vec::new();
        assert!(filter_client_to_server(&input[..], &mut out, SOON).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]));
        assert!(
            filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.is_err(),
            "undecodable HPACK"
        );
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1]));
        assert!(
            filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.is_err(),
            "padding longer than the frame"
        );
        let mut input = PREFACE.to_vec();
        input.extend(frame_header(MAX_FRAME_PAYLOAD + 1, 0x0, 0, 1));
        assert!(filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.is_err(), "oversized frame");
        // Padding that covers the priority fields (found by fuzzing: it underflowed the block
        // length and panicked debug builds).
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_HEADERS, 1, &[4, 0, 0, 0, 0, 16]));
        let err = filter_client_to_server(&input[..], &mut Vec::new(), SOON).await.unwrap_err();
        assert!(err.to_string().contains("short priority"), "{err}");
        // Not HTTP/2: passed through for the server to refuse.
        let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore bytes".to_vec();
        assert_eq!(run(junk.clone()).await, junk);
    }

    #[test]
    fn integers_use_continuation_bytes() {
        let mut v = Vec::new();
        encode_int(&mut v, 0, 7, 1337);
        assert_eq!(v, [127, 0xba, 0x09]);
        let mut v = Vec::new();
        encode_int(&mut v, 0, 7, 10);
        assert_eq!(v, [10]);
    }
}
