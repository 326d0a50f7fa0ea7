//! X.509: CA certificates and X509-SVIDs (SPIFFE X509-SVID standard, sections 4 and 5).
//!
//! Every SVID has exactly one URI SAN (its SPIFFE ID), `cA=false`, a critical key usage with
//! digitalSignature only, and EKU serverAuth + clientAuth. Its lifetime never passes its signer's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};
use vouch_core::{ttl, CommonName, DnsName, SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keys::{random_bytes, SigningKey};
use crate::CaError;

/// Largest CSR accepted, in bytes; a P-256 or RSA-4096 CSR is far smaller.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Truncates a time to whole seconds, the precision of X.509 validity.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// A CA certificate with its signing key, able to sign certificates.
pub struct Ca {
    der: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: Issuer<'static, SigningKey>,
    /// The fixed SVID layout for this CA (None: SVIDs go through the general builder).
    template: Option<crate::svid_der::LeafTemplate>,
    /// The certificate as PEM (every issued chain carries it).
    pem: std::sync::Arc<str>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

fn serial_bytes() -> Result<[u8; 16], CaError> {
    let mut bytes = random_bytes::<16>()?;
    // Positive, and without a leading zero byte, so every serial is exactly 16 bytes of DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(bytes)
}

fn serial() -> Result<SerialNumber, CaError> {
    Ok(SerialNumber::from_slice(&serial_bytes()?))
}

fn uri_san(id: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(id.try_into().map_err(|_| CaError::Crypto("URI SAN encoding failed"))?))
}

fn ca_params(
    td: &TrustDomain,
    common_name: String,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vouch");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.serial_number = Some(serial()?);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // The SPIFFE standard recommends the trust domain's ID as the URI SAN of signing certificates.
    params.subject_alt_names = vec![uri_san(td.id().as_str())?];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The SANs of one kind, picked by `pick`, as strings.
fn sans<'a>(
    cert: &'a X509Certificate<'a>,
    pick: impl Fn(&x509_parser::extensions::GeneralName<'a>) -> Option<&'a str>,
) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().filter_map(|n| pick(n).map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// Facts read back from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether basicConstraints says cA=true.
    pub is_ca: bool,
    /// The URI SANs.
    pub uris: Vec<String>,
    /// The raw subject public key (EC point or RSA key), for matching against a private key.
    pub public_key: Vec<u8>,
    /// The full SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// The serial number as lowercase hex of its DER content bytes: names one certificate of its
    /// issuer (the server records an agent's current SVID by it).
    pub serial: String,
}

/// Parses a DER certificate and reads the facts vouch relies on.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CaError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| CaError::InvalidCertificate(format!("not a DER certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCertificate("trailing bytes after the certificate".into()));
    }
    let to_time = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    let uris = sans(&cert, |n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(u),
        _ => None,
    });
    Ok(CertInfo {
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
        is_ca,
        uris,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        spki_der: cert.public_key().raw.to_vec(),
        serial: cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

impl Ca {
    /// Creates a self-signed root CA for `td`.
    pub fn self_signed_root(
        td: &TrustDomain,
        key: SigningKey,
        label: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, CaError> {
        let (not_before, not_after) = (whole_seconds(not_before), whole_seconds(not_after));
        let params = ca_params(td, format!("vouch root CA {td} {label}"), not_before, not_after, None)?;
        let cert = params.self_signed(&key)?;
        Ok(Self::assemble(cert.der().to_vec(), not_before, not_after, Issuer::new(params, key)))
    }

    /// Creates an intermediate (signing) CA under `self`. Its validity is cut to `self`'s.
    pub fn sign_intermediate(
        &self,
        td: &TrustDomain,
        key: SigningKey,
        label: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, CaError> {
        let not_before = whole_seconds(not_before).max(self.not_before);
        let not_after = whole_seconds(not_after).min(self.not_after);
        let params = ca_params(td, format!("vouch signing CA {td} {label}"), not_before, not_after, Some(0))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self::assemble(cert.der().to_vec(), not_before, not_after, Issuer::new(params, key)))
    }

    /// Loads a CA from its certificate and key, checking that they belong together and that the
    /// certificate is a CA.
    pub fn from_parts(der: Vec<u8>, key: SigningKey) -> Result<Self, CaError> {
        let info = cert_info(&der)?;
        if !info.is_ca {
            return Err(CaError::InvalidCertificate(
                "the certificate is not a CA (basicConstraints cA is not true)".into(),
            ));
        }
        if info.public_key != key.public_point() {
            return Err(CaError::InvalidKey("the private key does not belong to the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)?;
        Ok(Self::assemble(der, info.not_before, info.not_after, issuer))
    }

    fn assemble(
        der: Vec<u8>,
        not_before: SystemTime,
        not_after: SystemTime,
        issuer: Issuer<'static, SigningKey>,
    ) -> Self {
        let template = crate::svid_der::LeafTemplate::from_ca(&der, issuer.key());
        let pem = crate::pem::encode("CERTIFICATE", &der).into();
        Self { der, not_before, not_after, issuer, template, pem }
    }

    /// The certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> &std::sync::Arc<str> {
        &self.pem
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The private key.
    pub fn key(&self) -> &SigningKey {
        self.issuer.key()
    }

    /// Signs an X509-SVID for `spiffe_id` over `public_key`, valid from `now` for `ttl` but never past
    /// this CA's end. The subject is `O=vouch`, with `CN=<common_name>` after it when given. The
    /// result says whether the lifetime was cut short.
    pub fn sign_svid(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[DnsName],
        common_name: Option<&CommonName>,
        public_key: &CsrPublicKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<X509Svid, CaError> {
        if spiffe_id.is_trust_domain_id() {
            return Err(crate::RequestError::NotAWorkload(spiffe_id.clone()).into());
        }
        let life = ttl::lifetime(whole_seconds(now), ttl, self.not_after)
            .ok_or(CaError::NotReady("the signing CA has expired"))?;
        let not_before = life.not_before.max(self.not_before);
        if let (Some(template), Some(spki)) = (&self.template, &public_key.spki) {
            let dns: Vec<&str> = dns_names.iter().map(|d| d.as_str()).collect();
            let cert_der = template.sign(
                self.issuer.key(),
                &serial_bytes()?,
                not_before,
                life.not_after,
                spki,
                spiffe_id.as_str(),
                &dns,
                common_name.map(CommonName::as_str),
            )?;
            return Ok(X509Svid { cert_der, not_before, not_after: life.not_after, capped: life.capped });
        }
        self.sign_svid_with_builder(spiffe_id, dns_names, common_name, public_key, life)
    }

    /// The general path (also the reference the fixed layout is tested against).
    pub(crate) fn sign_svid_with_builder(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[DnsName],
        common_name: Option<&CommonName>,
        public_key: &CsrPublicKey,
        life: ttl::Lifetime,
    ) -> Result<X509Svid, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "vouch");
        if let Some(cn) = common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        params.serial_number = Some(serial()?);
        params.not_before = life.not_before.max(self.not_before).into();
        params.not_after = life.not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut sans = vec![uri_san(spiffe_id.as_str())?];
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| CaError::Refused(format!("bad DNS name `{}`", name.as_str())))?,
            ));
        }
        params.subject_alt_names = sans;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(X509Svid {
            cert_der: cert.der().to_vec(),
            not_before: life.not_before.max(self.not_before),
            not_after: life.not_after,
            capped: life.capped,
        })
    }
}

/// A freshly signed X509-SVID (the leaf only; the chain comes from the authority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    /// Leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether the CA's remaining life cut the requested lifetime short.
    pub capped: bool,
}

/// The public key of a CSR whose signature has been checked (or of a key vouch generated), of a
/// type vouch accepts.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    alg: &'static rcgen::SignatureAlgorithm,
    /// The subjectPublicKey bits: an EC point, a PKCS#1 RSA key, or an Ed25519 key.
    key: Vec<u8>,
    /// The whole SubjectPublicKeyInfo (DER), for EC keys (whose encoding is canonical); SVIDs for
    /// other key types go through the general builder.
    spki: Option<Vec<u8>>,
}

impl rcgen::PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl CsrPublicKey {
    /// A P-256 public key from its uncompressed point.
    pub(crate) fn p256(point: Vec<u8>) -> Self {
        let mut spki = crate::svid_der::P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&point);
        Self { alg: &rcgen::PKCS_ECDSA_P256_SHA256, key: point, spki: Some(spki) }
    }

    /// Wraps a SubjectPublicKeyInfo (DER) of an allowed type: EC P-256 or P-384, RSA of 2048 to 8192
    /// bits, or Ed25519.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CaError> {
        use x509_parser::public_key::PublicKey;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| CaError::InvalidCsr("the public key is not valid DER".into()))?;
        // The algorithm a certificate's SubjectPublicKeyInfo will name for this key.
        let alg: &'static rcgen::SignatureAlgorithm = match spki.parsed() {
            Ok(PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => &rcgen::PKCS_ECDSA_P256_SHA256,
                    "1.3.132.0.34" => &rcgen::PKCS_ECDSA_P384_SHA384,
                    _ => return Err(CaError::InvalidCsr("EC keys must be on P-256 or P-384".into())),
                }
            }
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if !(2048..=8192).contains(&bits) {
                    return Err(CaError::InvalidCsr(format!(
                        "RSA keys must have 2048 to 8192 bits, not {bits}"
                    )));
                }
                &rcgen::PKCS_RSA_SHA256
            }
            Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
                &rcgen::PKCS_ED25519
            }
            _ => {
                return Err(CaError::InvalidCsr(
                    "unsupported key type: use EC P-256/P-384, RSA or Ed25519".into(),
                ))
            }
        };
        let ec = matches!(spki.parsed(), Ok(PublicKey::EC(_)));
        Ok(Self { alg, key: spki.subject_public_key.data.to_vec(), spki: ec.then(|| spki.raw.to_vec()) })
    }
}

/// Parses a PKCS#10 CSR (DER), checks its self-signature, and returns its public key.
///
/// The subject and requested extensions of the CSR are ignored: the SPIFFE ID, DNS names and key
/// usages come from the registration entry, never from what the requester asks for.
pub fn verify_csr(der: &[u8]) -> Result<CsrPublicKey, CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    if der.len() > MAX_CSR_BYTES {
        return Err(CaError::InvalidCsr(format!("larger than {MAX_CSR_BYTES} bytes")));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|_| CaError::InvalidCsr("not a DER PKCS#10 certificate request".into()))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCsr("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|_| CaError::InvalidCsr("its signature does not verify with its own public key".into()))?;
    CsrPublicKey::from_spki_der(csr.certification_request_info.subject_pki.raw)
}

/// Parses a CSR given as PEM (`CERTIFICATE REQUEST`) or DER.
pub fn verify_csr_pem_or_der(input: &[u8]) -> Result<CsrPublicKey, CaError> {
    if input.starts_with(b"-----") {
        let text = std::str::from_utf8(input).map_err(|_| CaError::InvalidCsr("PEM is not UTF-8".into()))?;
        let der = crate::pem::decode_one(text, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
            .ok_or_else(|| CaError::InvalidCsr("no `CERTIFICATE REQUEST` PEM block".into()))?;
        verify_csr(&der)
    } else {
        verify_csr(input)
    }
}

/// Verifies `signature` over `message` with the public key of a certificate: ECDSA (P-256 with
/// SHA-256, P-384 with SHA-384, DER signatures), RSA PKCS#1 v1.5 with SHA-256, or Ed25519. Used for
/// proof of possession of a node key.
pub fn verify_with_cert(cert_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CaError> {
    use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| CaError::InvalidCertificate("not a DER certificate".into()))?;
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    let alg: &'static dyn VerificationAlgorithm = match spki.parsed() {
        Ok(PublicKey::EC(_)) => match curve.as_deref() {
            Some("1.2.840.10045.3.1.7") => &signature::ECDSA_P256_SHA256_ASN1,
            Some("1.3.132.0.34") => &signature::ECDSA_P384_SHA384_ASN1,
            _ => return Err(CaError::InvalidCertificate("EC keys must be on P-256 or P-384".into())),
        },
        Ok(PublicKey::RSA(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
        Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            &signature::ED25519
        }
        _ => return Err(CaError::InvalidCertificate("unsupported key type".into())),
    };
    // For RSA the key bits are the PKCS#1 RSAPublicKey, which is what aws-lc-rs expects.
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(message, signature)
        .map_err(|_| CaError::Refused("the proof-of-possession signature does not verify".into()))
}

/// Facts of a node certificate for x509pop selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertFacts {
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The DNS SANs.
    pub dns_names: Vec<String>,
    /// The URI SANs.
    pub uris: Vec<String>,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
}

/// Reads the x509pop facts of a node certificate.
pub fn node_cert_facts(cert_der: &[u8]) -> Result<NodeCertFacts, CaError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| CaError::InvalidCertificate("not a DER certificate".into()))?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
    let dns = sans(&cert, |n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d),
        _ => None,
    });
    let uris = sans(&cert, |n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(u),
        _ => None,
    });
    let fingerprint = hex::encode(crate::keys::sha256(cert_der));
    Ok(NodeCertFacts { common_name: cn, dns_names: dns, uris, fingerprint })
}
