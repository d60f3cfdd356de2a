//! Talking to the DSM nodes over gRPC: `Kv.Status` tells which master-capable pod is
//! active (and its epoch), `Kv.Drain` empties a slave before the StatefulSet removes it.
//!
//! A secured cluster is dialled the way its clients dial it ([`NodeCredentials`]): TLS
//! verifying the node against the cluster CA for the Service name dialled, a client
//! certificate when the masters demand one, and a read-write bearer token (`Drain`
//! writes) when they demand tokens. The reconciler reads these from the cluster's
//! Secrets on every reconcile, so a rotated CA or token is picked up without a restart.
//!
//! The reconciler sees the nodes through the [`NodeApi`] trait, so its tests run
//! against a fake instead of sockets.

use std::fmt;
use std::time::Duration;

use dsm_wire::metadata;
use futures::future::BoxFuture;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

pub use dsm_wire::proto;
pub use proto::{DrainReply, StatusReply};

/// How the operator authenticates to one cluster's nodes. The default dials plaintext
/// with no token.
#[derive(Clone, Default)]
pub struct NodeCredentials {
    /// The cluster CA (PEM): dial TLS and verify each node against it for the name
    /// dialled. `None` dials plaintext.
    pub ca: Option<String>,
    /// Certificate and private key (PEM) to present, for masters that demand client
    /// certificates (`spec.tls.clientAuth: required`).
    pub identity: Option<(String, String)>,
    /// `Bearer <token>`, sent as `authorization` metadata with every call.
    pub token: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only whether each part is there: never the key or the token.
        f.debug_struct("NodeCredentials")
            .field("tls", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// The first token of a token file (the nodes' format: one per line, surrounding
/// whitespace trimmed, blank lines and `#` comments skipped).
pub fn first_token(file: &str) -> Option<&str> {
    file.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
}

/// The `authorization` value carrying `token`, marked sensitive so it is never printed.
///
/// # Errors
/// A token that is not printable ASCII (it could not be sent as gRPC metadata); the
/// message does not repeat it.
pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, &'static str> {
    // HTTP would take other bytes too, but the nodes document printable ASCII.
    if !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("the token is not printable ASCII");
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not printable ASCII")?;
    value.set_sensitive(true);
    Ok(value)
}

/// The node calls the operator makes.
pub trait NodeApi: Send + Sync {
    /// `Kv.Status` on the master-capable node at `address` (active or standby).
    fn status<'a>(
        &'a self,
        address: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<StatusReply>>;
    /// `Kv.Drain` of `slave_id` through the active master at `address`; returns when
    /// every key the slave held has another replica.
    fn drain<'a>(
        &'a self,
        address: &'a str,
        slave_id: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<DrainReply>>;
}

/// [`NodeApi`] over real gRPC connections, one per call (the operator calls rarely).
#[derive(Clone, Debug)]
pub struct GrpcNodes {
    /// Bounds dialling a node that is down or not scheduled yet.
    pub connect_timeout: Duration,
    /// Bounds `Status`, which answers from memory.
    pub status_timeout: Duration,
    /// Bounds `Drain`, which copies every key of a slave and so takes longer.
    pub drain_timeout: Duration,
}

impl Default for GrpcNodes {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            status_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(300),
        }
    }
}

impl GrpcNodes {
    async fn client(
        &self,
        address: &str,
        timeout: Duration,
        credentials: &NodeCredentials,
    ) -> Result<proto::kv_client::KvClient<tonic::transport::Channel>> {
        let unreachable = |message: String| Error::NodeUnreachable {
            address: address.to_string(),
            message,
        };
        let endpoint = match &credentials.ca {
            None => Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| unreachable(e.to_string()))?,
            Some(ca) => {
                // The server name verified is the host dialled: a Service name the
                // member certificate lists.
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some((cert, key)) = &credentials.identity {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Endpoint::from_shared(format!("https://{address}"))
                    .and_then(|e| e.tls_config(tls))
                    .map_err(|e| unreachable(e.to_string()))?
            }
        };
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(proto::kv_client::KvClient::new(channel))
    }
}

/// A request carrying the token, if any.
fn request<T>(message: T, credentials: &NodeCredentials) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &credentials.token {
        request
            .metadata_mut()
            .insert(metadata::AUTHORIZATION, token.clone());
    }
    request
}

impl NodeApi for GrpcNodes {
    fn status<'a>(
        &'a self,
        address: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<StatusReply>> {
        Box::pin(async move {
            let mut client = self
                .client(address, self.status_timeout, credentials)
                .await?;
            let reply = client
                .status(request(proto::StatusRequest {}, credentials))
                .await
                .map_err(|status| Error::NodeRpc {
                    address: address.to_string(),
                    call: "Status",
                    status: Box::new(status),
                })?;
            Ok(reply.into_inner())
        })
    }

    fn drain<'a>(
        &'a self,
        address: &'a str,
        slave_id: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<DrainReply>> {
        Box::pin(async move {
            let mut client = self
                .client(address, self.drain_timeout, credentials)
                .await?;
            let message = proto::DrainRequest {
                slave_id: slave_id.to_string(),
            };
            let reply = client
                .drain(request(message, credentials))
                .await
                .map_err(|status| Error::NodeRpc {
                    address: address.to_string(),
                    call: "Drain",
                    status: Box::new(status),
                })?;
            Ok(reply.into_inner())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_skips_comments_and_blank_lines() {
        assert_eq!(
            first_token("# read-write\n\n  tok-1  \ntok-2\n"),
            Some("tok-1")
        );
        assert_eq!(first_token("# none\n\n"), None);
    }

    #[test]
    fn tokens_and_keys_never_print() {
        let credentials = NodeCredentials {
            ca: Some("CA".to_string()),
            identity: Some(("CERT".to_string(), "SECRET-KEY".to_string())),
            token: Some(bearer("SECRET-TOKEN").expect("token")),
        };
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(bearer("caf\u{e9}").is_err());
    }
}
