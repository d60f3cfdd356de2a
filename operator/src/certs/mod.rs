//! The certificates of a TLS cluster when the operator issues them itself: the cluster CA
//! and the one member certificate every master, backup and slave presents.
//!
//! Everything here is a pure function of the cluster's names and the time, so issuance
//! and renewal are unit-tested without an API server; the reconciler stores the results in
//! the Secrets `<name>-tls-ca` and `<name>-tls` ([`crate::objects::tls_ca_secret`],
//! [`crate::objects::tls_secret`]).
//!
//! Why one certificate for every member rather than one per role or per pod: the nodes
//! trust any certificate of the cluster CA as any member (docs/SECURITY.md), so separate
//! certificates would add Secrets to keep in step without keeping anyone out. The
//! certificate names every address a member is dialled at ([`member_dns_names`]) and
//! allows both server and client authentication, which mutual TLS between members needs.
//!
//! Renewal ([`reissue_reason`]) is decided from the certificate itself, not from
//! bookkeeping beside it: a member certificate is issued again when it is within
//! [`RENEW_BEFORE`] of expiring, no longer names exactly the wanted addresses, is not
//! signed by the current CA, or does not match its key. The nodes reload the files of
//! the updated Secret by themselves. The CA is never issued again once it exists.
//!
//! Key material never reaches a log or an error message: [`CaPems`] and [`MemberPems`]
//! print without their keys, and the errors name what is wrong, not the bytes.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::error::{Error, Result};
use crate::names::{Names, Seat};

/// How long the generated CA is valid: long enough never to be in the way. Rotating it is
/// a deliberate act (docs/SECURITY.md).
pub const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 3650);
/// How long a member certificate is valid.
pub const MEMBER_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365);
/// A member certificate this close to expiring is issued again.
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 30);
/// How far back certificates are dated, so a node whose clock is a little behind the
/// operator's accepts a certificate issued a moment ago.
const BACKDATE: SignedDuration = SignedDuration::from_hours(1);

/// Key of the CA certificate in both Secrets (and in cert-manager's Secrets).
pub const CA_CERT: &str = "ca.crt";
/// Key of the CA's private key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
/// Key of the member certificate in the member Secret (`kubernetes.io/tls` layout).
pub const TLS_CERT: &str = "tls.crt";
/// Key of the member's private key in the member Secret.
pub const TLS_KEY: &str = "tls.key";

/// The cluster CA, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPems {
    /// The self-signed CA certificate (`ca.crt`).
    pub cert: String,
    /// Its private key (`ca.key`).
    pub key: String,
}

/// The UTF-8 text of a Secret's `key`, if it has it.
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

impl CaPems {
    /// The CA in a CA Secret (`ca.crt`, `ca.key`), checked to be usable.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] naming the key that is missing or wrong.
    pub fn from_secret(secret: &Secret, name: &str) -> Result<CaPems> {
        let read = |key: &str| {
            secret_text(secret, key).ok_or_else(|| Error::InvalidSecret {
                secret: name.to_string(),
                reason: format!("it has no {key}"),
            })
        };
        let ca = CaPems {
            cert: read(CA_CERT)?,
            key: read(CA_KEY)?,
        };
        check_ca(&ca, name)?;
        Ok(ca)
    }
}

impl fmt::Debug for CaPems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaPems")
            .field("cert", &self.cert)
            .field("key", &"[elided]")
            .finish()
    }
}

/// The member Secret's contents, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct MemberPems {
    /// The member certificate (`tls.crt`).
    pub cert: String,
    /// Its private key (`tls.key`).
    pub key: String,
    /// The CA certificate members verify each other against (`ca.crt`).
    pub ca: String,
}

impl MemberPems {
    /// The contents of a member Secret (`tls.crt`, `tls.key`, `ca.crt`).
    ///
    /// # Errors
    /// [`Reissue::Unreadable`] naming the first key that is missing.
    pub fn from_secret(secret: &Secret) -> Result<MemberPems, Reissue> {
        let read = |key| secret_text(secret, key).ok_or(Reissue::Unreadable(key));
        Ok(MemberPems {
            cert: read(TLS_CERT)?,
            key: read(TLS_KEY)?,
            ca: read(CA_CERT)?,
        })
    }
}

impl fmt::Debug for MemberPems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberPems")
            .field("cert", &self.cert)
            .field("key", &"[elided]")
            .field("ca", &self.ca)
            .finish()
    }
}

/// Why an existing member certificate is issued again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// A key of the Secret is missing or is not a certificate or key.
    Unreadable(&'static str),
    /// `ca.crt` is not the current CA, or the certificate is not signed by it.
    OtherCa,
    /// The certificate does not name exactly the addresses members are dialled at.
    Names,
    /// `tls.key` is not the certificate's key.
    KeyMismatch,
    /// The certificate expires within [`RENEW_BEFORE`] (or has expired).
    Expiring {
        /// Its `notAfter`.
        not_after: Timestamp,
    },
}

impl fmt::Display for Reissue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reissue::Unreadable(what) => write!(f, "{what} is missing or unreadable"),
            Reissue::OtherCa => write!(f, "it is not signed by the cluster CA"),
            Reissue::Names => write!(f, "its names differ from the cluster's addresses"),
            Reissue::KeyMismatch => write!(f, "tls.key does not match tls.crt"),
            Reissue::Expiring { not_after } => write!(f, "it expires at {not_after}"),
        }
    }
}

/// Every DNS name a member is dialled at, as the member certificate lists them.
///
/// Master, backup and leader Services in each form a resolver completes (`name`,
/// `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`), and the slaves' pod names
/// under the headless Service (`<pod>.<name>-slaves.<ns>.svc`, what each slave
/// advertises) as wildcards. The `.svc` forms are what the operator configures; the
/// `cluster.local` form assumes the default cluster domain. The backup's names are there
/// even without a backup, so enabling one later needs no new certificate.
pub fn member_dns_names(names: &Names) -> Vec<String> {
    let ns = &names.namespace;
    let mut dns = Vec::new();
    for service in [
        names.seat(Seat::Master),
        names.seat(Seat::Backup),
        names.leader(),
    ] {
        dns.push(service.clone());
        dns.push(format!("{service}.{ns}"));
        dns.push(format!("{service}.{ns}.svc"));
        dns.push(format!("{service}.{ns}.svc.cluster.local"));
    }
    // Wildcards need two labels after the `*` (rustls/webpki), so there is no short form.
    let slaves = names.slaves_service();
    dns.push(format!("*.{slaves}.{ns}"));
    dns.push(format!("*.{slaves}.{ns}.svc"));
    dns.push(format!("*.{slaves}.{ns}.svc.cluster.local"));
    dns
}

fn offset_time(at: Timestamp) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|_| Error::Certificate(format!("{at} is out of a certificate's range")))
}

fn issuing(error: rcgen::Error) -> Error {
    Error::Certificate(error.to_string())
}

/// A distinguished name with only a common name (rcgen's default has a placeholder).
fn common_name(name: String) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Generates the cluster CA, valid [`CA_VALIDITY`] from `now`.
///
/// # Errors
/// [`Error::Certificate`] if the key or certificate cannot be made.
pub fn generate_ca(names: &Names, now: Timestamp) -> Result<CaPems> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(format!(
        "dsm cluster CA {}/{}",
        names.namespace, names.cluster
    ));
    // Signs member certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_time(now - BACKDATE)?;
    params.not_after = offset_time(now + CA_VALIDITY)?;
    let key = KeyPair::generate().map_err(issuing)?;
    let cert = params.self_signed(&key).map_err(issuing)?;
    Ok(CaPems {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Checks that a CA read from its Secret can sign: a certificate and a key that go
/// together.
///
/// # Errors
/// [`Error::InvalidSecret`] naming what is wrong (`secret` is the Secret's name).
pub fn check_ca(ca: &CaPems, secret: &str) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidSecret {
        secret: secret.to_string(),
        reason: reason.to_string(),
    };
    let key = KeyPair::from_pem(&ca.key).map_err(|_| invalid("ca.key is not a PEM private key"))?;
    let pem = parse_pem(&ca.cert).ok_or_else(|| invalid("ca.crt is not a PEM certificate"))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| invalid("ca.crt is not a valid X.509 certificate"))?;
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(invalid("ca.key does not match ca.crt"));
    }
    Ok(())
}

/// Issues the member certificate, signed by `ca`, valid [`MEMBER_VALIDITY`] from `now`,
/// naming [`member_dns_names`], for server and client authentication.
///
/// # Errors
/// [`Error::Certificate`] if the CA cannot be read back or the certificate cannot be made.
pub fn issue_member(ca: &CaPems, names: &Names, now: Timestamp) -> Result<MemberPems> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(issuing)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(issuing)?;
    let mut params = CertificateParams::default();
    params.distinguished_name =
        common_name(format!("dsm member {}/{}", names.namespace, names.cluster));
    params.subject_alt_names = member_dns_names(names)
        .into_iter()
        .map(|name| Ok(SanType::DnsName(name.try_into().map_err(issuing)?)))
        .collect::<Result<_>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset_time(now - BACKDATE)?;
    params.not_after = offset_time(now + MEMBER_VALIDITY)?;
    let key = KeyPair::generate().map_err(issuing)?;
    let cert = params.signed_by(&key, &issuer).map_err(issuing)?;
    Ok(MemberPems {
        cert: cert.pem(),
        key: key.serialize_pem(),
        ca: ca.cert.clone(),
    })
}

/// The first PEM block of `text`, if it is one.
fn parse_pem(text: &str) -> Option<Pem> {
    x509_parser::pem::parse_x509_pem(text.as_bytes())
        .ok()
        .map(|(_, pem)| pem)
}

/// Why `member` must be issued again at `now`, or `None` when it is good as it is.
pub fn reissue_reason(
    member: &MemberPems,
    ca: &CaPems,
    names: &Names,
    now: Timestamp,
) -> Option<Reissue> {
    if member.ca != ca.cert {
        return Some(Reissue::OtherCa);
    }
    let Some(ca_pem) = parse_pem(&ca.cert) else {
        return Some(Reissue::OtherCa);
    };
    let Ok(ca_cert) = ca_pem.parse_x509() else {
        return Some(Reissue::OtherCa);
    };
    let Some(pem) = parse_pem(&member.cert) else {
        return Some(Reissue::Unreadable(TLS_CERT));
    };
    let Ok(cert) = pem.parse_x509() else {
        return Some(Reissue::Unreadable(TLS_CERT));
    };
    let Ok(key) = KeyPair::from_pem(&member.key) else {
        return Some(Reissue::Unreadable(TLS_KEY));
    };
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Some(Reissue::OtherCa);
    }
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Some(Reissue::KeyMismatch);
    }
    let wanted: BTreeSet<String> = member_dns_names(names).into_iter().collect();
    if dns_names(&cert) != Some(wanted) {
        return Some(Reissue::Names);
    }
    let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    if not_after <= now + RENEW_BEFORE {
        return Some(Reissue::Expiring { not_after });
    }
    None
}

/// The DNS names of a certificate's subject alternative names, or `None` if it has other
/// kinds of names or an unreadable extension.
fn dns_names(cert: &X509Certificate<'_>) -> Option<BTreeSet<String>> {
    let san = cert.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
