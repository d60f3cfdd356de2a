//! TLS: PEM loading with errors that name the file, a server acceptor whose
//! configuration is rebuilt when its files change, and client endpoints.
//!
//! The server does not use tonic's static `ServerTlsConfig`: it accepts TCP
//! itself, runs the rustls handshake with the current [`ServerConfig`] in a
//! task per connection (so a slow or silent peer never holds up the accept
//! loop), and hands finished TLS streams to tonic through
//! `serve_with_incoming`. The configuration is a [`Watched`] value: the
//! certificate, key and CA files are checked at most once a second and a new
//! configuration is built when one changed. A change that does not load (a
//! key rotated before its certificate, a half-written file) keeps the old
//! configuration and logs why, so a rotation in progress never takes the
//! server down.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::ClientAuth;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often at most the files behind a [`Watched`] value are looked at.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Finished handshakes waiting for the gRPC server to take them.
const ACCEPT_QUEUE: usize = 64;

/// The provider every TLS configuration here is built with (explicit, so a
/// second provider compiled into the binary cannot make the choice
/// ambiguous).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every certificate in a PEM file; at least one.
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a valid PEM certificate file", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{}: no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// The file cannot be read or holds no private key.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{}: no valid PEM private key in it", path.display()))
}

/// A root store holding every certificate of a CA file.
fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// What identifies a version of a set of files: modification time and size
/// of each (`None` for one that cannot be read right now).
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            // `metadata` follows symlinks: a Kubernetes Secret volume swaps
            // its `..data` link on update, which changes what this sees.
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// A value built from files and rebuilt when they change.
pub struct Watched<T> {
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> anyhow::Result<T> + Send + Sync>,
    /// Current value, the stamp it was built from, when files were last
    /// looked at. A std `Mutex`: held for a `stat` of a few files at most
    /// once a second, and for a clone of an `Arc` otherwise, never across an
    /// `.await`.
    state: Mutex<(Arc<T>, Stamp, Instant)>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T> Watched<T> {
    /// Builds the value now (failing if it cannot be) and remembers the
    /// files to watch.
    ///
    /// # Errors
    /// Whatever `load` returns.
    pub fn new(
        paths: Vec<PathBuf>,
        load: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Watched<T>> {
        let before = stamp(&paths);
        let value = load()?;
        Ok(Watched {
            paths,
            load: Box::new(load),
            state: Mutex::new((Arc::new(value), before, Instant::now())),
        })
    }

    /// The current value, rebuilt first if the files changed since it was
    /// built (looked at most once per [`RELOAD_CHECK_INTERVAL`]).
    pub fn get(&self) -> Arc<T> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.2.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.2 = Instant::now();
            let now = stamp(&self.paths);
            if now != state.1 {
                match (self.load)() {
                    Ok(value) => {
                        tracing::info!(files = ?self.paths, "files changed: reloaded");
                        state.0 = Arc::new(value);
                        state.1 = now;
                    }
                    Err(e) => {
                        tracing::warn!(
                            files = ?self.paths,
                            "files changed but do not load, keeping the previous version: {e:#}"
                        );
                        // Retried at the next check: the rotation may be
                        // half done.
                    }
                }
            }
        }
        state.0.clone()
    }
}

/// A member's TLS server configuration, reloaded when its files change.
#[derive(Debug)]
pub struct ServerTls {
    config: Watched<ServerConfig>,
}

impl ServerTls {
    /// Loads the server configuration: certificate chain and key, and with
    /// a CA, verification of client certificates (required or optional).
    ///
    /// # Errors
    /// A file that cannot be read or is invalid, or a key that does not
    /// match the certificate; the message names the file.
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
        client_auth: ClientAuth,
    ) -> anyhow::Result<ServerTls> {
        let mut paths = vec![cert.clone(), key.clone()];
        paths.extend(ca.clone());
        let config = Watched::new(paths, move || {
            server_config(&cert, &key, ca.as_deref(), client_auth)
        })?;
        Ok(ServerTls { config })
    }

    /// The configuration new connections are accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.get()
    }

    /// Accepts connections on `listener` and yields them once their TLS
    /// handshake is done. Failed handshakes (plaintext clients, untrusted
    /// certificates) are logged and dropped. Stops accepting when the stream
    /// is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    client_auth: ClientAuth,
) -> anyhow::Result<ServerConfig> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS provider")?;
    let builder = match ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
            let verifier = match client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .with_context(|| format!("{}: cannot verify clients with it", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private).with_context(|| {
        format!(
            "{} and {}: not a usable certificate and key pair",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS settings for connections a process opens: the CA servers are checked
/// against and, for members and mTLS clients, the certificate to present.
/// The files are read again whenever an endpoint is made, so a member's
/// new connections pick up a rotated certificate.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

impl ClientTls {
    /// Checks the files now so a bad one fails at startup.
    ///
    /// # Errors
    /// An unreadable or invalid CA, certificate or key file.
    pub fn new(
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
        server_name: Option<String>,
    ) -> anyhow::Result<ClientTls> {
        let tls = ClientTls {
            ca,
            identity,
            server_name,
        };
        tls.config()?;
        Ok(tls)
    }

    /// tonic's client configuration from the files as they are now.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn config(&self) -> anyhow::Result<ClientTlsConfig> {
        load_roots(&self.ca)?;
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            load_certs(cert)?;
            load_key(key)?;
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// An endpoint for `address` (`host:port`, an `http://` or `https://` prefix
/// is ignored): `https` with `tls`, `http` without. Not connected yet.
///
/// # Errors
/// An address that is not a valid URI authority, or TLS files that no longer
/// load; as text, for the caller to wrap.
pub fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let address = address.trim();
    let bare = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    match tls {
        None => Endpoint::from_shared(format!("http://{bare}")).map_err(|e| e.to_string()),
        Some(tls) => {
            let config = tls.config().map_err(|e| format!("{e:#}"))?;
            Endpoint::from_shared(format!("https://{bare}"))
                .map_err(|e| e.to_string())?
                .tls_config(config)
                .map_err(|e| e.to_string())
        }
    }
}
