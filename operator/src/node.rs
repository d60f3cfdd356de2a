//! Talking to the DSM nodes over gRPC: `Kv.Status` tells which master-capable pod is
//! active (and its epoch), `Kv.Drain` empties a slave before the StatefulSet removes it.
//!
//! The reconciler sees the nodes through the [`NodeApi`] trait, so its tests run
//! against a fake instead of sockets.

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::Endpoint;

use crate::error::{Error, Result};

/// Code generated from `node/proto/dsm.proto` (the node crate owns the contract).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("dsm.v1");
}

pub use proto::{DrainReply, StatusReply};

/// The node calls the operator makes.
pub trait NodeApi: Send + Sync {
    /// `Kv.Status` on the master-capable node at `address` (active or standby).
    fn status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReply>>;
    /// `Kv.Drain` of `slave_id` through the active master at `address`; returns when
    /// every key the slave held has another replica.
    fn drain<'a>(
        &'a self,
        address: &'a str,
        slave_id: &'a str,
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
    ) -> Result<proto::kv_client::KvClient<tonic::transport::Channel>> {
        let unreachable = |message: String| Error::NodeUnreachable {
            address: address.to_string(),
            message,
        };
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(proto::kv_client::KvClient::new(channel))
    }
}

impl NodeApi for GrpcNodes {
    fn status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReply>> {
        Box::pin(async move {
            let mut client = self.client(address, self.status_timeout).await?;
            let reply = client
                .status(proto::StatusRequest {})
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
    ) -> BoxFuture<'a, Result<DrainReply>> {
        Box::pin(async move {
            let mut client = self.client(address, self.drain_timeout).await?;
            let reply = client
                .drain(proto::DrainRequest {
                    slave_id: slave_id.to_string(),
                })
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
