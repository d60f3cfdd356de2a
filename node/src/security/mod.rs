//! Transport security and client authentication: optional TLS on every gRPC
//! connection, mutual TLS between cluster members, bearer tokens for clients.
//!
//! # Threat model
//!
//! The network between clients and masters, and between masters and slaves,
//! is not trusted: someone on it may read, alter or inject traffic, connect
//! to any port, or pretend to be a slave or a master. With security enabled:
//!
//! - **Confidentiality and integrity on the wire.** Every gRPC connection
//!   (client → master, slave → master `Control`, master → slave `Replica`)
//!   is TLS 1.2/1.3 (rustls, *ring* provider). Clients verify the server
//!   certificate against the CA they are given (`--tls-ca`), so a man in the
//!   middle needs a certificate signed by that CA for the name dialled.
//! - **Cluster membership is mutual TLS from one cluster CA.** Members
//!   present their own certificate on every outgoing connection, and a server
//!   with a CA answers `Control` and `Replica` calls only on connections whose
//!   client certificate verified against it ([`auth`]). A process with a
//!   certificate from another CA (or none) cannot register as a slave, fence
//!   a slave or write to one.
//! - **Clients are authenticated by bearer tokens** (`authorization: Bearer
//!   <token>` metadata) when the master is given token files: read-write
//!   tokens may call every `Kv` method, read-only tokens only `Read` and
//!   `Status`. Tokens are compared in constant time (over SHA-256 digests, so
//!   neither the content nor the length of a configured token leaks through
//!   timing), against every configured token with no early exit. Optionally
//!   (`--tls-client-auth required`) clients must also present a certificate.
//! - **Rotation.** Certificate, key, CA and token files are re-read when
//!   their modification time or size changes (checked at most once a second,
//!   on the next connection or request): new connections see the new
//!   certificates without a restart; established connections keep theirs.
//!
//! Not protected: data at rest (the write-ahead log and slave databases are
//! plain files: protect the volumes), the metrics/health HTTP port (no
//! secrets, but readable by anyone who can reach it: restrict it with a
//! NetworkPolicy), denial of service by a peer that can open connections,
//! and anyone holding the cluster CA key or a member's key (they *are* a
//! member). Any member certificate is trusted for any member role: the CA
//! must issue certificates only to cluster members. Tokens are sent in clear
//! over a plaintext connection: use them with TLS. There is no revocation
//! list: rotate the CA to evict a member.
//!
//! Without any of the flags everything is plaintext and open, as before.
//!
//! The modules: [`tls`] (certificate loading, the reloading TLS acceptor,
//! client endpoints) and [`auth`] (tokens, the server-side check, the client
//! interceptor).

pub mod auth;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dsm_wire::env;
use prometheus::IntCounterVec;

pub use auth::{Access, AuthLayer, BearerToken, Tokens};
pub use tls::{ClientTls, ServerTls, endpoint};

/// TLS flags of the cluster members (`dsm master`, `dsm backup`, `dsm slave`).
#[derive(Args, Debug, Clone, Default)]
pub struct MemberTlsArgs {
    /// This member's certificate chain (PEM). With --tls-key and --tls-ca:
    /// serve TLS, and present this certificate to the other members.
    #[arg(long, value_name = "FILE", env = env::TLS_CERT, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM, PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = env::TLS_KEY, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): member certificates and the servers this
    /// member dials are verified against it.
    #[arg(long, value_name = "FILE", env = env::TLS_CA, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Whether clients of the `Kv` service must present a certificate signed
    /// by --tls-ca (members always must for `Control` and `Replica`).
    #[arg(long, value_name = "MODE", env = env::TLS_CLIENT_AUTH, value_enum, default_value_t = ClientAuth::Optional)]
    pub tls_client_auth: ClientAuth,
}

/// Whether a TLS server demands a client certificate from every connection.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A certificate is verified if presented; `Kv` clients may go without
    /// one (they use tokens), members may not.
    #[default]
    Optional,
    /// The TLS handshake fails without a certificate signed by the CA.
    Required,
}

/// Token flags of `dsm master` and `dsm backup`.
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// File of read-write client tokens, one per line (blank lines and lines
    /// starting with `#` are ignored). With it (or --read-only-token-file),
    /// every `Kv` call needs `authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE", env = env::TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// File of read-only client tokens (Read and Status only), same format.
    #[arg(long, value_name = "FILE", env = env::READ_ONLY_TOKEN_FILE)]
    pub read_only_token_file: Option<PathBuf>,
}

/// Security flags of `dsm client`.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientSecurityArgs {
    /// CA (PEM) to verify the masters' certificates against; turns TLS on.
    #[arg(long, value_name = "FILE", env = env::TLS_CA)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for masters run with
    /// `--tls-client-auth required`.
    #[arg(long, value_name = "FILE", env = env::TLS_CERT, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", env = env::TLS_KEY, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the master's certificate instead of the host dialled
    /// (e.g. dialling an IP whose certificate names a DNS name).
    #[arg(
        long,
        value_name = "NAME",
        env = env::TLS_SERVER_NAME,
        requires = "tls_ca"
    )]
    pub tls_server_name: Option<String>,
    /// Bearer token sent with every call (prefer the DSM_TOKEN variable:
    /// command lines are visible to other local users).
    #[arg(long, value_name = "TOKEN", env = env::TOKEN, hide_env_values = true)]
    pub token: Option<String>,
}

/// How a member serves and dials: everything security-related in one value.
/// The default is plaintext and open.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS for the member's own server; `None` serves plaintext.
    pub server: Option<Arc<ServerTls>>,
    /// TLS for the connections this member opens to other members (with its
    /// own certificate); `None` dials plaintext.
    pub client: Option<ClientTls>,
    /// Client tokens the `Kv` service demands; `None` leaves it open.
    pub tokens: Option<Arc<Tokens>>,
}

impl Security {
    /// Loads a member's security settings from its flags, reading every file
    /// once so a missing or invalid one stops the process at startup with an
    /// error naming it.
    ///
    /// # Errors
    /// An unreadable or invalid certificate, key, CA or token file.
    pub fn for_member(tls: &MemberTlsArgs, tokens: Option<&TokenArgs>) -> anyhow::Result<Security> {
        let (server, client) = match (&tls.tls_cert, &tls.tls_key, &tls.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let server = ServerTls::new(
                    cert.clone(),
                    key.clone(),
                    Some(ca.clone()),
                    tls.tls_client_auth,
                )?;
                let client = ClientTls::new(ca.clone(), Some((cert.clone(), key.clone())), None)?;
                (Some(Arc::new(server)), Some(client))
            }
            (None, None, None) => (None, None),
            _ => anyhow::bail!("--tls-cert, --tls-key and --tls-ca go together"),
        };
        let tokens = match tokens {
            Some(TokenArgs {
                token_file,
                read_only_token_file,
            }) if token_file.is_some() || read_only_token_file.is_some() => Some(Arc::new(
                Tokens::watch(token_file.clone(), read_only_token_file.clone())
                    .context("cannot load the client tokens")?,
            )),
            _ => None,
        };
        if server.is_none() && tokens.is_some() {
            tracing::warn!("client tokens are configured without TLS: they travel in clear");
        }
        Ok(Security {
            server,
            client,
            tokens,
        })
    }

    /// The tower layer that enforces tokens and member certificates on this
    /// member's gRPC server, counting refusals in `rejected` (its role's
    /// `dsm_auth_rejected_total`).
    pub fn auth_layer(&self, rejected: &IntCounterVec) -> AuthLayer {
        AuthLayer::new(self.tokens.clone(), self.server.is_some(), rejected.clone())
    }
}

/// What a client uses to reach a secured cluster: TLS settings and token.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// TLS towards the masters; `None` dials plaintext.
    pub tls: Option<ClientTls>,
    /// Token sent as `authorization: Bearer …` on every call.
    pub token: BearerToken,
}

impl ClientSecurity {
    /// Loads the client's settings from its flags (files are read and
    /// checked now).
    ///
    /// # Errors
    /// An unreadable or invalid CA, certificate or key file, or a token that
    /// cannot be sent as gRPC metadata.
    pub fn from_args(args: &ClientSecurityArgs) -> anyhow::Result<ClientSecurity> {
        let tls = match &args.tls_ca {
            Some(ca) => {
                let identity = match (&args.tls_cert, &args.tls_key) {
                    (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                    (None, None) => None,
                    _ => anyhow::bail!("--tls-cert and --tls-key go together"),
                };
                Some(ClientTls::new(
                    ca.clone(),
                    identity,
                    args.tls_server_name.clone(),
                )?)
            }
            None => None,
        };
        let token = match &args.token {
            Some(token) => BearerToken::new(token)?,
            None => BearerToken::default(),
        };
        Ok(ClientSecurity { tls, token })
    }
}
