//! A bounded HPACK decoder (RFC 7541) for the header filter in front of the Workload API.
//!
//! Why not a crate: the decoder the filter used before (loona-hpack) built its Huffman table, a
//! nested hash map of 257 codes, afresh for every Huffman-coded string; gRPC clients Huffman-code
//! most header values, so that was about an eighth of the agent's CPU per Workload API call. Here the
//! table is built once, and decoding is a canonical-code walk over the bits.
//!
//! Bounds: the dynamic table never exceeds the size the agent's HTTP/2 server advertises (the
//! default, 4096 octets); strings cannot be longer than the block that carries them; fields are
//! handed to the caller as borrowed slices, so a block of thousands of references to one large table
//! entry allocates nothing here (the caller bounds what it copies).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// What is wrong with a header block (the connection is dropped; the text is for debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The static table (RFC 7541, Appendix A), index 1 first.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Code lengths in bits of the HPACK Huffman code (RFC 7541, Appendix B), symbols 0..=255 and EOS
/// (256). The code is canonical: codes follow from the lengths alone (shorter first, then by
/// symbol), which is how [`HuffmanTable`] rebuilds them; a test checks known codes of the RFC.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6,
    6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7,
    8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7,
    15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24,
    23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23,
    23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26,
    26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20,
    21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27,
    27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_CODE_LENGTH: usize = 30;

/// The canonical code laid out for decoding: for each length, the first code of that length, how
/// many codes have it, and where their symbols start in `symbols` (sorted by length, then symbol).
struct HuffmanTable {
    first: [u32; MAX_CODE_LENGTH + 1],
    count: [u32; MAX_CODE_LENGTH + 1],
    offset: [usize; MAX_CODE_LENGTH + 1],
    symbols: [u16; 257],
}

fn huffman() -> &'static HuffmanTable {
    static TABLE: OnceLock<HuffmanTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = HuffmanTable {
            first: [0; MAX_CODE_LENGTH + 1],
            count: [0; MAX_CODE_LENGTH + 1],
            offset: [0; MAX_CODE_LENGTH + 1],
            symbols: [0; 257],
        };
        for &len in &CODE_LENGTHS {
            t.count[usize::from(len)] += 1;
        }
        let (mut code, mut next) = (0u32, 0usize);
        for len in 1..=MAX_CODE_LENGTH {
            code = (code + t.count[len - 1]) << 1;
            t.first[len] = code;
            t.offset[len] = next;
            next += t.count[len] as usize;
        }
        let mut placed = t.offset;
        for (symbol, &len) in CODE_LENGTHS.iter().enumerate() {
            let len = usize::from(len);
            t.symbols[placed[len]] = symbol as u16;
            placed[len] += 1;
        }
        t
    })
}

/// Decodes a Huffman-coded string (RFC 7541, section 5.2), appending to `out`.
fn huffman_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = huffman();
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            // Canonical: a complete code of this length lies in [first, first + count); anything
            // above is the prefix of a longer code.
            let index = code.wrapping_sub(t.first[len]);
            if index < t.count[len] {
                let symbol = t.symbols[t.offset[len] + index as usize];
                if symbol == EOS {
                    return Err(HpackError("EOS inside a Huffman-coded string"));
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            } else if len == MAX_CODE_LENGTH {
                return Err(HpackError("invalid Huffman code"));
            }
        }
    }
    // What is left must be padding: at most 7 bits, all ones (the start of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HpackError("invalid Huffman padding"));
    }
    Ok(())
}

/// Reads an integer with an `n`-bit prefix (RFC 7541, section 5.1) at `*pos`.
fn integer(block: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let first = *block.get(*pos).ok_or(HpackError("truncated integer"))?;
    *pos += 1;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    // Four continuation bytes reach 2^28 + 2^n, more than any index, length or size a block within
    // the agent's bounds can need; a longer integer is an attack or garbage.
    for i in 0..4 {
        let byte = *block.get(*pos).ok_or(HpackError("truncated integer"))?;
        *pos += 1;
        value += usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError("integer too large"))
}

/// Reads a string literal (RFC 7541, section 5.2) at `*pos`.
fn string(block: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman_coded = block.get(*pos).ok_or(HpackError("truncated string"))? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let end =
        pos.checked_add(len).filter(|&e| e <= block.len()).ok_or(HpackError("string past the block"))?;
    let raw = &block[*pos..end];
    *pos = end;
    if huffman_coded {
        // The shortest code is 5 bits, so the decoded string is at most 8/5 as long.
        let mut out = Vec::with_capacity(raw.len() * 8 / 5 + 1);
        huffman_decode(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// The decoder of one connection's client header blocks: its dynamic table lives as long as the
/// connection.
pub struct Decoder {
    /// Newest entry first (index 62).
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Octets in the table, counted as RFC 7541 section 4.1 does (name + value + 32 per entry).
    size: usize,
    /// The table's current maximum size, as last set by the client.
    max_size: usize,
    /// The most the client may set: what the server advertised.
    limit: usize,
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

impl Decoder {
    /// A decoder whose dynamic table may grow to `limit` octets (the advertised
    /// SETTINGS_HEADER_TABLE_SIZE; the protocol default is 4096).
    pub fn new(limit: usize) -> Self {
        Self { table: VecDeque::new(), size: 0, max_size: limit, limit }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // RFC 7541 section 4.4: an entry larger than the table empties it and is not added.
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// The (name, value) at HPACK index `index` (1-61 static, then dynamic, newest first).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => Ok(STATIC_TABLE[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError("index past the tables")),
        }
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field in order.
    /// On an error the connection must be dropped: the dynamic table may be out of step.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut pos, 7)?;
                let (name, value) = self.get(index)?;
                field(name, value);
            } else if b & 0x40 != 0 {
                // Literal with incremental indexing.
                let index = integer(block, &mut pos, 6)?;
                let name = if index == 0 { string(block, &mut pos)? } else { self.get(index)?.0.to_vec() };
                let value = string(block, &mut pos)?;
                field(&name, &value);
                self.insert(name, value);
            } else if b & 0x20 != 0 {
                // Dynamic table size update: only before the block's first field (section 4.2).
                if fields_seen {
                    return Err(HpackError("table size update after a field"));
                }
                let size = integer(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(HpackError("table size above the advertised limit"));
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let index = integer(block, &mut pos, 4)?;
                let value_and_name = if index == 0 {
                    let name = string(block, &mut pos)?;
                    (name, string(block, &mut pos)?)
                } else {
                    let name = self.get(index)?.0.to_vec();
                    (name, string(block, &mut pos)?)
                };
                field(&value_and_name.0, &value_and_name.1);
            }
            fields_seen = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `s` with the canonical code rebuilt from [`CODE_LENGTHS`], for round trips.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let t = huffman();
        let code_of = |sym: u16| {
            let len = usize::from(CODE_LENGTHS[usize::from(sym)]);
            let rank = t.symbols[t.offset[len]..t.offset[len] + t.count[len] as usize]
                .iter()
                .position(|&x| x == sym)
                .expect("every symbol has a code");
            (t.first[len] + rank as u32, len)
        };
        let (mut acc, mut bits, mut out) = (0u64, 0usize, Vec::new());
        for &b in s {
            let (code, len) = code_of(u16::from(b));
            acc = (acc << len) | u64::from(code);
            bits += len;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    #[test]
    fn the_rebuilt_code_is_the_rfcs() {
        // Codes from RFC 7541 Appendix B.
        let t = huffman();
        let code = |sym: usize| {
            let len = usize::from(CODE_LENGTHS[sym]);
            let rank = t.symbols[t.offset[len]..].iter().position(|&x| usize::from(x) == sym).unwrap();
            (t.first[len] + rank as u32, len)
        };
        assert_eq!(code(usize::from(b'0')), (0x0, 5));
        assert_eq!(code(usize::from(b'a')), (0x3, 5));
        assert_eq!(code(usize::from(b' ')), (0x14, 6));
        assert_eq!(code(usize::from(b'z')), (0x7b, 7));
        assert_eq!(code(0), (0x1ff8, 13));
        assert_eq!(code(256), (0x3fff_ffff, 30));
    }

    #[test]
    fn rfc_examples_decode() {
        // RFC 7541 C.4.1: "www.example.com" Huffman-coded.
        let www = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        let mut out = Vec::new();
        huffman_decode(&www, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        // C.4.1 to C.4.3: three requests on one connection, the dynamic table carried across.
        let mut d = Decoder::new(4096);
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
                0xf4, 0xff,
            ],
            &[0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
                0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut all = Vec::new();
        for b in blocks {
            let mut fields = Vec::new();
            d.decode(b, |n, v| fields.push((n.to_vec(), v.to_vec()))).unwrap();
            all.push(fields);
        }
        let f = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(
            all[0],
            [f(":method", "GET"), f(":scheme", "http"), f(":path", "/"), f(":authority", "www.example.com")]
        );
        assert_eq!(all[1][4], f("cache-control", "no-cache"));
        assert_eq!(all[2][2], f(":path", "/index.html"));
        assert_eq!(all[2][3], f(":authority", "www.example.com"));
        assert_eq!(all[2][4], f("custom-key", "custom-value"));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        for s in [&all[..], b"", b"a", b"run%2Fvouch%2Fapi.sock", b"\xff\xfe\x00"] {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(s), &mut out).unwrap();
            assert_eq!(out, s);
        }
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(4096);
        let cases: [&[u8]; 9] = [
            &[0x80],                                     // index 0
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],       // integer too large
            &[0xbe],                                     // empty dynamic table
            &[0x40, 0x85, 0xff],                         // string past the block
            &[0x82, 0x3f, 0xe1, 0x1f],                   // size update after a field
            &[0x3f, 0xe2, 0x1f],                         // size update above 4096
            &[0x00, 0x81, 0x00, 0x00],                   // Huffman padding of zeros
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], // EOS inside a string
            &[0xff],                                     // truncated integer
        ];
        for c in cases {
            assert!(d.decode(c, |_, _| {}).is_err(), "{c:x?} decoded");
        }
    }

    #[test]
    fn the_table_is_bounded_and_entries_are_evicted_oldest_first() {
        let mut d = Decoder::new(4096);
        // A size update to 100 then two entries of 32 + 1 + 40 = 73 octets: the second evicts the first.
        let mut block = vec![0x3f, 0x45]; // size update: 31 + 69 = 100
        for c in [b'a', b'b'] {
            block.extend([0x40, 0x01, c, 0x28]);
            block.extend([c; 40]);
        }
        let mut names = Vec::new();
        d.decode(&block, |n, _| names.push(n.to_vec())).unwrap();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(d.table.len(), 1);
        assert_eq!(d.get(62).unwrap().0, b"b");
        assert!(d.size <= 100);
    }
}
