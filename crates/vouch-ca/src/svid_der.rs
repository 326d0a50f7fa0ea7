//! X509-SVIDs written straight to DER from a fixed layout (RFC 5280 section 4.1), instead of through a
//! general certificate builder: an SVID's shape never varies (one URI SAN, optional DNS SANs, the same
//! key usages), and the builder's allocations were a fifth of the cost of issuing one.
//!
//! The result is checked in tests against the builder's certificate for the same inputs, field by
//! field, and against webpki and the SPIFFE clients like every SVID.

use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keys::{KeyAlg, SigningKey};
use crate::CaError;

/// `ecdsa-with-SHA256` and `ecdsa-with-SHA384` AlgorithmIdentifiers (no parameters).
const ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
/// The SubjectPublicKeyInfo prefix of an uncompressed P-256 point (65 bytes follow).
pub(crate) const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Subject `O=vouch` (UTF8String), as the builder writes it.
const SUBJECT: &[u8] = &[
    0x30, 0x10, 0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x05, b'v', b'o', b'u', b'c',
    b'h',
];
/// The RDN `O=vouch` alone (the content of [`SUBJECT`]).
const O_VOUCH_RDN: &[u8] =
    &[0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x05, b'v', b'o', b'u', b'c', b'h'];
/// The attribute type commonName (2.5.4.3).
const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

/// Appends the subject: `O=vouch`, then `CN=<common_name>` (UTF8String) when there is one, in the
/// order the builder writes them.
fn push_subject(out: &mut Vec<u8>, common_name: Option<&str>) {
    let Some(cn) = common_name else {
        out.extend_from_slice(SUBJECT);
        return;
    };
    let mut attr = CN_OID.to_vec();
    tlv(&mut attr, 0x0c, cn.as_bytes());
    let mut seq = Vec::with_capacity(attr.len() + 4);
    tlv(&mut seq, 0x30, &attr);
    let mut rdns = O_VOUCH_RDN.to_vec();
    tlv(&mut rdns, 0x31, &seq);
    tlv(out, 0x30, &rdns);
}
/// basicConstraints, critical, cA false (the DEFAULT, so an empty SEQUENCE).
const BASIC_CONSTRAINTS: &[u8] =
    &[0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00];
/// keyUsage, critical, digitalSignature only.
const KEY_USAGE: &[u8] =
    &[0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80];
/// extKeyUsage serverAuth, clientAuth.
const EXT_KEY_USAGE: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05,
    0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
    }
}

/// Appends tag, length and content.
fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// `YYMMDDHHMMSSZ` (UTCTime, before 2050) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn push_time(out: &mut Vec<u8>, t: SystemTime) -> Result<(), CaError> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| CaError::Crypto("time before 1970"))?.as_secs();
    let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|_| CaError::Crypto("time out of range"))?;
    let (y, mo, d) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    if (1950..2050).contains(&y) {
        let text = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(out, 0x17, text.as_bytes());
    } else {
        let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        tlv(out, 0x18, text.as_bytes());
    }
    Ok(())
}

/// What a signing CA contributes to every SVID it signs.
#[derive(Debug, Clone)]
pub(crate) struct LeafTemplate {
    /// The CA's subject, which is the SVIDs' issuer (DER Name, copied as is).
    issuer: Vec<u8>,
    /// The authorityKeyIdentifier extension, complete.
    authority_key_id: Vec<u8>,
    /// The CA's signature algorithm.
    signature_alg: &'static [u8],
}

impl LeafTemplate {
    /// From the CA certificate. None when it has no subjectKeyIdentifier to point at (a foreign
    /// upstream CA, say); its SVIDs then go through the general builder.
    pub(crate) fn from_ca(ca_der: &[u8], key: &SigningKey) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(ca_der).ok()?;
        let ski = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })?;
        let mut key_id = Vec::new();
        tlv(&mut key_id, 0x80, &ski);
        let mut seq = Vec::new();
        tlv(&mut seq, 0x30, &key_id);
        let mut octets = Vec::new();
        tlv(&mut octets, 0x04, &seq);
        let mut ext = vec![0x06, 0x03, 0x55, 0x1d, 0x23];
        ext.extend_from_slice(&octets);
        let mut authority_key_id = Vec::new();
        tlv(&mut authority_key_id, 0x30, &ext);
        let signature_alg = match key.alg() {
            KeyAlg::EcP256 => ECDSA_SHA256,
            KeyAlg::EcP384 => ECDSA_SHA384,
            // A CA key is never RSA (SigningKey refuses to make one for X.509).
            KeyAlg::Rsa2048 => return None,
        };
        Some(Self { issuer: cert.tbs_certificate.subject.as_raw().to_vec(), authority_key_id, signature_alg })
    }

    /// Writes and signs one SVID. `spki` is the subject's SubjectPublicKeyInfo (DER).
    #[allow(clippy::too_many_arguments)] // one per certificate field; a struct would only rename them
    pub(crate) fn sign(
        &self,
        key: &SigningKey,
        serial: &[u8; 16],
        not_before: SystemTime,
        not_after: SystemTime,
        spki: &[u8],
        uri: &str,
        dns_names: &[&str],
        common_name: Option<&str>,
    ) -> Result<Vec<u8>, CaError> {
        let mut tbs = Vec::with_capacity(512 + spki.len());
        tbs.extend_from_slice(&[0xa0, 0x03, 0x02, 0x01, 0x02]); // version v3
        tlv(&mut tbs, 0x02, serial);
        tbs.extend_from_slice(self.signature_alg);
        tbs.extend_from_slice(&self.issuer);
        let mut validity = Vec::with_capacity(34);
        push_time(&mut validity, not_before)?;
        push_time(&mut validity, not_after)?;
        tlv(&mut tbs, 0x30, &validity);
        push_subject(&mut tbs, common_name);
        tbs.extend_from_slice(spki);

        let mut exts = Vec::with_capacity(256);
        exts.extend_from_slice(BASIC_CONSTRAINTS);
        exts.extend_from_slice(KEY_USAGE);
        exts.extend_from_slice(EXT_KEY_USAGE);
        let mut names = Vec::with_capacity(uri.len() + 32);
        tlv(&mut names, 0x86, uri.as_bytes());
        for d in dns_names {
            tlv(&mut names, 0x82, d.as_bytes());
        }
        let mut general_names = Vec::with_capacity(names.len() + 4);
        tlv(&mut general_names, 0x30, &names);
        let mut san = vec![0x06, 0x03, 0x55, 0x1d, 0x11];
        tlv(&mut san, 0x04, &general_names);
        tlv(&mut exts, 0x30, &san);
        // subjectKeyIdentifier: the first 20 bytes of SHA-256 over the SubjectPublicKeyInfo, as the
        // builder derives it.
        let digest = crate::keys::sha256(spki);
        let mut id = Vec::with_capacity(22);
        tlv(&mut id, 0x04, &digest[..20]);
        let mut ski = vec![0x06, 0x03, 0x55, 0x1d, 0x0e];
        tlv(&mut ski, 0x04, &id);
        tlv(&mut exts, 0x30, &ski);
        exts.extend_from_slice(&self.authority_key_id);
        let mut ext_seq = Vec::with_capacity(exts.len() + 4);
        tlv(&mut ext_seq, 0x30, &exts);
        tlv(&mut tbs, 0xa3, &ext_seq);

        let mut tbs_seq = Vec::with_capacity(tbs.len() + 4);
        tlv(&mut tbs_seq, 0x30, &tbs);
        let signature = key.sign(&tbs_seq)?;
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(&signature);
        let mut body = tbs_seq;
        body.extend_from_slice(self.signature_alg);
        tlv(&mut body, 0x03, &bits);
        let mut cert = Vec::with_capacity(body.len() + 4);
        tlv(&mut cert, 0x30, &body);
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vouch_core::{DnsName, SpiffeId, TrustDomain};
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;
    use crate::keys::WorkloadKey;
    use crate::x509::Ca;

    /// The parts of a certificate that must be equal between the two paths (serials and signatures
    /// differ by design: both are random).
    fn facts(der: &[u8], ca: &X509Certificate<'_>) -> Vec<String> {
        let (rest, c) = X509Certificate::from_der(der).unwrap();
        assert!(rest.is_empty());
        c.verify_signature(Some(ca.public_key())).expect("signed by the CA");
        assert_eq!(c.tbs_certificate.raw_serial().len(), 16);
        let mut out = vec![
            format!("version {:?}", c.version()),
            format!("subject {}", c.subject()),
            format!("subject raw {:?}", c.subject().as_raw()),
            format!("issuer raw {:?}", c.issuer().as_raw()),
            format!(
                "validity {} {}",
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp()
            ),
            format!("spki {:?}", c.public_key().raw),
            format!("sig alg {}", c.signature_algorithm.algorithm),
        ];
        let mut exts: Vec<String> = c
            .extensions()
            .iter()
            .map(|e| {
                let v = match e.parsed_extension() {
                    ParsedExtension::BasicConstraints(b) => {
                        format!("ca={} len={:?}", b.ca, b.path_len_constraint)
                    }
                    ParsedExtension::KeyUsage(k) => format!("{k:?}"),
                    ParsedExtension::ExtendedKeyUsage(k) => format!("{k:?}"),
                    ParsedExtension::SubjectAlternativeName(s) => s
                        .general_names
                        .iter()
                        .map(|n| match n {
                            GeneralName::URI(u) => format!("uri:{u}"),
                            GeneralName::DNSName(d) => format!("dns:{d}"),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    ParsedExtension::SubjectKeyIdentifier(k) => format!("{:?}", k.0),
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        format!("{:?}", a.key_identifier.as_ref().map(|k| k.0))
                    }
                    other => format!("unexpected {other:?}"),
                };
                format!("{} critical={} {v}", e.oid, e.critical)
            })
            .collect();
        exts.sort();
        out.extend(exts);
        out
    }

    #[test]
    fn fixed_layout_matches_the_builder() {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for alg in [KeyAlg::EcP256, KeyAlg::EcP384] {
            let root = Ca::self_signed_root(
                &td,
                SigningKey::generate(alg, crate::keys::KeyUse::X509).unwrap(),
                "r",
                now,
                now + Duration::from_secs(86400 * 365),
            )
            .unwrap();
            let ca = root
                .sign_intermediate(
                    &td,
                    SigningKey::generate(alg, crate::keys::KeyUse::X509).unwrap(),
                    "i",
                    now,
                    now + Duration::from_secs(86400 * 30),
                )
                .unwrap();
            let (_, ca_cert) = X509Certificate::from_der(ca.der()).unwrap();
            let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/payments").unwrap();
            let dns = [DnsName::new("payments.prod.svc").unwrap(), DnsName::new("localhost").unwrap()];
            let key = WorkloadKey::generate().unwrap();
            let long_cn = vouch_core::CommonName::new(&"é".repeat(64)).unwrap();
            let cns = [None, Some(vouch_core::CommonName::new("app_user").unwrap()), Some(long_cn)];
            for (names, cn) in
                [(&dns[..], &cns[0]), (&[][..], &cns[0]), (&dns[..], &cns[1]), (&[][..], &cns[2])]
            {
                let cn = cn.as_ref();
                // Far-future validity too: GeneralizedTime after 2049.
                for (ttl, when) in [(3600, now), (7200, UNIX_EPOCH + Duration::from_secs(2_600_000_000))] {
                    let life = vouch_core::ttl::lifetime(
                        crate::x509::whole_seconds(when),
                        Duration::from_secs(ttl),
                        when + Duration::from_secs(86400),
                    )
                    .unwrap();
                    let fast = ca.sign_svid(&id, names, cn, &key.public, Duration::from_secs(ttl), when);
                    let reference = ca.sign_svid_with_builder(&id, names, cn, &key.public, life).unwrap();
                    if when == now {
                        let fast = fast.unwrap();
                        assert_eq!(facts(&fast.cert_der, &ca_cert), facts(&reference.cert_der, &ca_cert));
                        crate::x509::cert_info(&fast.cert_der).unwrap();
                    } else {
                        // After the CA's end: refused on both paths alike; the encoder itself is
                        // checked directly below.
                        assert!(fast.is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn the_subject_without_a_common_name_is_the_fixed_one() {
        let mut plain = Vec::new();
        push_subject(&mut plain, None);
        assert_eq!(plain, SUBJECT);
        assert_eq!(&SUBJECT[2..], O_VOUCH_RDN);
    }

    #[test]
    fn times_switch_to_generalized_time_in_2050() {
        let mut out = Vec::new();
        push_time(&mut out, UNIX_EPOCH + Duration::from_secs(2_524_607_999)).unwrap(); // 2049-12-31T23:59:59Z
        push_time(&mut out, UNIX_EPOCH + Duration::from_secs(2_524_608_000)).unwrap(); // 2050-01-01T00:00:00Z
        assert_eq!(&out[..15], b"\x17\x0d491231235959Z");
        assert_eq!(&out[15..], b"\x18\x0f20500101000000Z");
        let mut long = Vec::new();
        push_len(&mut long, 300);
        assert_eq!(long, [0x82, 0x01, 0x2c]);
    }
}
