//! Who may call what: bearer tokens for `Kv`, client certificates for the
//! member services, enforced by one tower layer in front of every service
//! of a member's gRPC server.
//!
//! The rules, by request path (deny by default):
//! - `grpc.health.v1.Health/*`: open (Kubernetes probes).
//! - `dsm.v1.Kv/Read`, `dsm.v1.Kv/Status`: any configured token.
//! - every other `dsm.v1.Kv/*` (Write, Compact, Drain, Pipeline) and any
//!   unknown path: a read-write token.
//! - `dsm.v1.Control/*`, `dsm.v1.Replica/*` (member traffic): on a TLS
//!   server, a client certificate that verified against the cluster CA
//!   (rustls only reports certificates it verified). Tokens do not apply.
//!
//! Without token files the `Kv` rules let everything through.
//! Missing or unknown token → UNAUTHENTICATED; a read-only token asking for
//! a write → PERMISSION_DENIED; member call without a certificate →
//! UNAUTHENTICATED.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use dsm_wire::metadata;
use futures::future::{Either, Ready, ready};
use prometheus::IntCounterVec;
use subtle::{Choice, ConstantTimeEq};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::tls::Watched;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing (health).
    Open,
    /// A read-only or read-write token.
    Read,
    /// A read-write token.
    Write,
    /// A verified member certificate (on a TLS server).
    Member,
}

impl Access {
    /// What the gRPC method at `path` (`/package.Service/Method`) needs.
    pub fn for_path(path: &str) -> Access {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        match (service, method) {
            ("grpc.health.v1.Health", _) => Access::Open,
            ("dsm.v1.Kv", "Read" | "Status") => Access::Read,
            ("dsm.v1.Control" | "dsm.v1.Replica", _) => Access::Member,
            _ => Access::Write,
        }
    }
}

/// SHA-256 of a token: tokens are compared as fixed-size digests so the
/// comparison takes the same time whatever their lengths.
type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// One version of the token files, as digests.
#[derive(Default)]
struct TokenSet {
    read_write: Vec<Digest>,
    read_only: Vec<Digest>,
}

impl TokenSet {
    fn load(read_write: Option<&Path>, read_only: Option<&Path>) -> anyhow::Result<TokenSet> {
        let set = TokenSet {
            read_write: read_write
                .map(parse_token_file)
                .transpose()?
                .unwrap_or_default(),
            read_only: read_only
                .map(parse_token_file)
                .transpose()?
                .unwrap_or_default(),
        };
        if set.read_write.is_empty() && set.read_only.is_empty() {
            anyhow::bail!("the token files hold no token: every client would be refused");
        }
        Ok(set)
    }
}

/// Digests of the tokens in a file: one per line, surrounding whitespace
/// trimmed, blank lines and `#` comments skipped.
fn parse_token_file(path: &Path) -> anyhow::Result<Vec<Digest>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| digest(l.as_bytes()))
        .collect())
}

/// The configured client tokens, reloaded when their files change.
pub struct Tokens {
    set: Watched<TokenSet>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens, not even digests.
        f.debug_struct("Tokens").field("files", &self.set).finish()
    }
}

impl Tokens {
    /// Loads the token files and watches them for changes.
    ///
    /// # Errors
    /// A file that cannot be read, or no token at all.
    pub fn watch(
        read_write: Option<PathBuf>,
        read_only: Option<PathBuf>,
    ) -> anyhow::Result<Tokens> {
        let paths = read_write.iter().chain(read_only.iter()).cloned().collect();
        let set = Watched::new(paths, move || {
            TokenSet::load(read_write.as_deref(), read_only.as_deref())
        })?;
        Ok(Tokens { set })
    }

    /// Whether `presented` (the token, without `Bearer `) grants `need`
    /// (`Read` or `Write`). Every configured token is compared, in constant
    /// time, whatever matched: the time taken says nothing about which
    /// token, if any, was close.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing or unknown token, PERMISSION_DENIED for
    /// a read-only token asking for a write.
    pub fn check(&self, presented: Option<&[u8]>, need: Access) -> Result<(), Status> {
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "this cluster requires a token: send `authorization: Bearer <token>` \
                 (dsm client --token or DSM_TOKEN)",
            ));
        };
        let presented = digest(presented);
        let set = self.set.get();
        let mut read_write = Choice::from(0);
        for token in &set.read_write {
            read_write |= token.ct_eq(&presented);
        }
        let mut read_only = Choice::from(0);
        for token in &set.read_only {
            read_only |= token.ct_eq(&presented);
        }
        match (bool::from(read_write), bool::from(read_only), need) {
            (true, _, _) => Ok(()),
            (false, true, Access::Read | Access::Open) => Ok(()),
            (false, true, _) => Err(Status::permission_denied(
                "this token is read-only: it may Read and Status only",
            )),
            (false, false, _) => Err(Status::unauthenticated("unknown token")),
        }
    }
}

/// The token in an `authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// The server-side policy: which calls need what, and the tokens.
#[derive(Debug)]
struct Policy {
    tokens: Option<Arc<Tokens>>,
    /// Member services need a verified client certificate (TLS servers).
    members_need_certificate: bool,
}

impl Policy {
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        match Access::for_path(request.uri().path()) {
            Access::Open => Ok(()),
            Access::Member => {
                if !self.members_need_certificate {
                    return Ok(());
                }
                let verified = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(TlsConnectInfo::peer_certs)
                    .is_some_and(|certs| !certs.is_empty());
                if verified {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(
                        "member services need a client certificate from the cluster CA",
                    ))
                }
            }
            need @ (Access::Read | Access::Write) => match &self.tokens {
                None => Ok(()),
                Some(tokens) => {
                    let presented = request
                        .headers()
                        .get(metadata::AUTHORIZATION)
                        .and_then(|v| bearer(v.as_bytes()));
                    tokens.check(presented, need)
                }
            },
        }
    }
}

/// Tower layer enforcing the rules of this module; add it with
/// `Server::builder().layer(...)`.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    policy: Arc<Policy>,
    /// `dsm_auth_rejected_total` of the role whose server this guards.
    rejected: IntCounterVec,
}

impl AuthLayer {
    /// The layer for a server with these `tokens` (none: `Kv` is open);
    /// `tls` says whether the server runs TLS with a CA, which makes member
    /// services require a verified client certificate; refusals are
    /// counted in `rejected`, by reason.
    pub fn new(tokens: Option<Arc<Tokens>>, tls: bool, rejected: IntCounterVec) -> AuthLayer {
        AuthLayer {
            policy: Arc::new(Policy {
                tokens,
                members_need_certificate: tls,
            }),
            rejected,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.policy.clone(),
            rejected: self.rejected.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
    rejected: IntCounterVec,
}

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.policy.check(&request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(status) => {
                self.rejected
                    .with_label_values(&[status_label(&status)])
                    .inc();
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

fn status_label(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "unauthenticated",
    }
}

/// Client side: adds `authorization: Bearer <token>` to every request when
/// a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.0.is_some() { "<set>" } else { "<none>" };
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl BearerToken {
    /// A token to send.
    ///
    /// # Errors
    /// A token with characters gRPC metadata cannot carry (control
    /// characters, non-ASCII).
    pub fn new(token: &str) -> anyhow::Result<BearerToken> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(metadata::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_access() {
        for (path, access) in [
            ("/grpc.health.v1.Health/Check", Access::Open),
            ("/dsm.v1.Kv/Read", Access::Read),
            ("/dsm.v1.Kv/Status", Access::Read),
            ("/dsm.v1.Kv/Write", Access::Write),
            ("/dsm.v1.Kv/Pipeline", Access::Write),
            ("/dsm.v1.Kv/Drain", Access::Write),
            ("/dsm.v1.Kv/SomethingNew", Access::Write),
            ("/dsm.v1.Control/Register", Access::Member),
            ("/dsm.v1.Replica/Put", Access::Member),
            ("/other.Service/X", Access::Write),
            ("garbage", Access::Write),
        ] {
            assert_eq!(Access::for_path(path), access, "{path}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn tokens_grant_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let rw = dir.path().join("rw");
        let ro = dir.path().join("ro");
        std::fs::write(&rw, "# writers\nwrite-token\n\n").unwrap();
        std::fs::write(&ro, "  read-token  \n").unwrap();
        let tokens = Tokens::watch(Some(rw), Some(ro)).unwrap();
        assert!(tokens.check(Some(b"write-token"), Access::Write).is_ok());
        assert!(tokens.check(Some(b"write-token"), Access::Read).is_ok());
        assert!(tokens.check(Some(b"read-token"), Access::Read).is_ok());
        let denied = tokens
            .check(Some(b"read-token"), Access::Write)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        for bad in [
            Some(&b"write-toke"[..]),
            Some(b""),
            Some(b"# writers"),
            None,
        ] {
            let err = tokens.check(bad, Access::Read).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn empty_or_missing_token_files_are_startup_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let err = Tokens::watch(Some(empty), None).unwrap_err();
        assert!(format!("{err:#}").contains("no token"), "{err:#}");
        let missing = dir.path().join("missing");
        let err = Tokens::watch(None, Some(missing.clone())).unwrap_err();
        assert!(
            format!("{err:#}").contains(&missing.display().to_string()),
            "{err:#}"
        );
    }
}
