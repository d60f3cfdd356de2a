//! How the master talks to one slave: the [`SlaveLink`] trait, its gRPC
//! implementation (every Put, Get and Fence on one long-lived
//! `Replica.Pipeline` stream, see [`crate::pipeline`]), and the [`Connector`]
//! that turns an address into a link.
//!
//! The trait is the seam that lets the master's rules (takeover, fencing,
//! READ, WRITE, deduplication) be tested in process against in-memory slaves,
//! under a paused clock (`master::tests`).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::limits::Limits;
use crate::pipeline::{self, Pipe, Protocol};
use crate::proto::replica_client::ReplicaClient;
use crate::proto::replica_op::Op;
use crate::proto::replica_result::Result as Outcome;
use crate::proto::{
    FenceRequest, GetReply, GetRequest, InventoryRequest, KeyVersion, PutReply, PutRequest,
    ReplicaBatch, ReplicaOp, ReplicaResults,
};
use crate::security::{self, ClientTls};

/// Chunks of a slave's inventory, as they arrive.
pub type InventoryStream = BoxStream<'static, Result<Vec<KeyVersion>, Status>>;

/// One slave, as the master sees it. Every call carries the master's epoch;
/// a slave fenced by a newer master answers FAILED_PRECONDITION (Put, Get,
/// Inventory) or a higher epoch (Fence).
///
/// Contract: a call that returns `Ok` was applied by the slave (a Put is
/// durable there); a call that fails may or may not have been.
#[tonic::async_trait]
pub trait SlaveLink: Send + Sync + Debug {
    /// Stores a versioned value unless the slave holds a newer one.
    async fn put(&self, request: PutRequest) -> Result<PutReply, Status>;
    /// The slave's current version and value of a key.
    async fn get(&self, request: GetRequest) -> Result<GetReply, Status>;
    /// Raises the slave's fenced epoch to at least `epoch`; returns the epoch
    /// after the call (higher than `epoch`: the caller was deposed).
    async fn fence(&self, epoch: u64) -> Result<u64, Status>;
    /// Every key the slave holds, with its version.
    async fn inventory(&self, epoch: u64) -> Result<InventoryStream, Status>;
}

/// Makes links to slaves from the addresses they register with.
pub trait Connector: Send + Sync {
    /// A link to the slave at `address` (connected lazily).
    ///
    /// # Errors
    /// INVALID_ARGUMENT when the address is unusable.
    fn connect(&self, address: &str) -> Result<Arc<dyn SlaveLink>, Status>;
}

/// Links over gRPC, with the cluster's TLS and message limits.
pub struct GrpcConnector {
    /// TLS towards slaves, if any.
    pub tls: Option<ClientTls>,
    /// Bounds connecting to a slave.
    pub connect_timeout: Duration,
    /// Message size limits.
    pub limits: Limits,
}

impl Connector for GrpcConnector {
    fn connect(&self, address: &str) -> Result<Arc<dyn SlaveLink>, Status> {
        let endpoint = security::endpoint(address, self.tls.as_ref())
            .map_err(|e| {
                Status::invalid_argument(format!("slave address {address:?} is not usable: {e}"))
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let max_message = self.limits.max_message_bytes();
        let client = ReplicaClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Ok(Arc::new(GrpcSlave {
            pipe: Pipe::new(ReplicaPipeline(client.clone())),
            client,
        }))
    }
}

/// A slave reached over gRPC.
#[derive(Debug)]
struct GrpcSlave {
    /// For the streaming Inventory call.
    client: ReplicaClient<Channel>,
    /// The hot path: Puts, Gets and Fences batched on one stream.
    pipe: Pipe<ReplicaPipeline>,
}

#[tonic::async_trait]
impl SlaveLink for GrpcSlave {
    async fn put(&self, request: PutRequest) -> Result<PutReply, Status> {
        match self.pipe.call(Op::Put(request)).await? {
            Outcome::Put(reply) => Ok(reply),
            _ => Err(wrong_kind("Put")),
        }
    }

    async fn get(&self, request: GetRequest) -> Result<GetReply, Status> {
        match self.pipe.call(Op::Get(request)).await? {
            Outcome::Get(reply) => Ok(reply),
            _ => Err(wrong_kind("Get")),
        }
    }

    async fn fence(&self, epoch: u64) -> Result<u64, Status> {
        match self.pipe.call(Op::Fence(FenceRequest { epoch })).await? {
            Outcome::Fence(reply) => Ok(reply.epoch),
            _ => Err(wrong_kind("Fence")),
        }
    }

    async fn inventory(&self, epoch: u64) -> Result<InventoryStream, Status> {
        let stream = self
            .client
            .clone()
            .inventory(InventoryRequest { epoch })
            .await?
            .into_inner();
        Ok(stream.map(|chunk| chunk.map(|c| c.entries)).boxed())
    }
}

fn wrong_kind(what: &str) -> Status {
    Status::internal(format!(
        "slave answered a {what} with another kind of result"
    ))
}

/// `Replica.Pipeline` as a [`Protocol`].
#[derive(Debug)]
struct ReplicaPipeline(ReplicaClient<Channel>);

impl Protocol for ReplicaPipeline {
    type Op = Op;
    type Outcome = Outcome;
    type Batch = ReplicaBatch;
    type Results = ReplicaResults;

    pipeline::batch_and_results!(
        batch: ReplicaBatch,
        op: ReplicaOp,
        error: Outcome::Error,
        peer: "slave"
    );

    async fn open(
        &mut self,
        batches: tokio_stream::wrappers::ReceiverStream<ReplicaBatch>,
    ) -> Result<tonic::Streaming<ReplicaResults>, Status> {
        Ok(self.0.pipeline(batches).await?.into_inner())
    }
}
