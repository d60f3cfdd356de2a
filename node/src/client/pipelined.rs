//! A client that sends READs and WRITEs over `Kv.Pipeline`: many requests in
//! flight on one stream per master, batched, for callers that need
//! throughput (the bench). Each op has exactly the semantics of the unary
//! call, failover included: it goes through the same policy as every
//! [`Client`] call (`failover.rs`), so a standby's hint is followed, a lost
//! master is replaced by the other one, and a WRITE sent again keeps its
//! number, so it is applied at most once.
//!
//! Each endpoint's stream is opened by its first op and reopened by the
//! first op after it broke (`crate::pipeline`): when a master dies, the ops
//! in flight on its stream fail with UNAVAILABLE and are retried elsewhere.

use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Client, ClientConfig, ClientError};
use crate::limits::CLIENT_MAX_MESSAGE_BYTES;
use crate::pipeline::{self, Pipe, Protocol};
use crate::proto::kv_client::KvClient;
use crate::proto::kv_op::Op;
use crate::proto::kv_result::Result as Outcome;
use crate::proto::{KvBatch, KvOp, KvResults, ReadRequest, WriteRequest};
use crate::security::{BearerToken, ClientSecurity};
use crate::version::Version;

/// `Kv.Pipeline` as a [`Protocol`].
pub(super) struct KvPipeline(KvClient<InterceptedService<Channel, BearerToken>>);

impl Protocol for KvPipeline {
    type Op = Op;
    type Outcome = Outcome;
    type Batch = KvBatch;
    type Results = KvResults;

    pipeline::batch_and_results!(batch: KvBatch, op: KvOp, error: Outcome::Error, peer: "master");

    async fn open(
        &mut self,
        batches: ReceiverStream<KvBatch>,
    ) -> Result<tonic::Streaming<KvResults>, Status> {
        Ok(self.0.pipeline(batches).await?.into_inner())
    }
}

impl Client {
    /// Sends `op` over the pipeline of the endpoint the failover policy
    /// picks, again elsewhere while the answer says to.
    async fn call_pipelined(&self, op: Op) -> Result<Outcome, ClientError> {
        let attempt = |index, channel, _| {
            let pipe = self.pipe(index, channel);
            let op = op.clone();
            async move { pipe.call(op).await }
        };
        // A stream that stayed silent past the timeout may be dead without
        // knowing it (a half-open connection): the next op opens a new one.
        let silent = |index: usize| {
            if let Some(peer) = self.lock().peers.get_mut(index) {
                peer.pipe = None;
            }
        };
        self.on_endpoints(attempt, silent).await
    }

    /// Endpoint `index`'s pipeline, started on first use.
    fn pipe(&self, index: usize, channel: Channel) -> Arc<Pipe<KvPipeline>> {
        let mut state = self.lock();
        let start = || {
            let kv = KvClient::with_interceptor(channel, self.security.token.clone())
                .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES);
            Arc::new(Pipe::new(KvPipeline(kv)))
        };
        match state.peers.get_mut(index) {
            Some(peer) => peer.pipe.get_or_insert_with(start).clone(),
            // Peers are never removed; this only guards the index.
            None => start(),
        }
    }
}

/// A pipelined failover client. Cheap to share: every task may call it
/// concurrently, and their requests share each master's stream.
#[derive(Debug)]
pub struct PipelinedClient {
    client: Client,
}

impl PipelinedClient {
    /// A client of the masters `config` lists, as [`Client::try_new`];
    /// streams are opened on first use.
    ///
    /// # Errors
    /// As [`Client::try_new`].
    pub fn new(config: ClientConfig) -> Result<PipelinedClient, ClientError> {
        PipelinedClient::with_security(config, &ClientSecurity::default())
    }

    /// [`PipelinedClient::new`] with TLS and a token (see
    /// [`crate::security`]).
    ///
    /// # Errors
    /// As [`Client::try_with_security`].
    pub fn with_security(
        config: ClientConfig,
        security: &ClientSecurity,
    ) -> Result<PipelinedClient, ClientError> {
        Ok(PipelinedClient {
            client: Client::try_with_security(config, security.clone())?,
        })
    }

    /// Like [`Client::read`].
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn read(&self, key: &[u8]) -> Result<Option<(Bytes, Version)>, ClientError> {
        let op = Op::Read(ReadRequest { key: key.to_vec() });
        match self.client.call_pipelined(op).await {
            Ok(Outcome::Read(reply)) => Ok(Some((
                Bytes::from(reply.value),
                reply.version.map(Version::from).unwrap_or_default(),
            ))),
            Ok(_) => Err(self.wrong_kind()),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`Client::write`], exactly once across retries and failovers.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<Version, ClientError> {
        let number = self.client.numbering.next();
        let op = Op::Write(WriteRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            client_id: number.client,
            client_seq: number.seq,
            client_answered_below: number.answered_below(),
            condition: None,
        });
        match self.client.call_pipelined(op).await? {
            Outcome::Write(reply) => Ok(reply.version.map(Version::from).unwrap_or_default()),
            _ => Err(self.wrong_kind()),
        }
    }

    fn wrong_kind(&self) -> ClientError {
        ClientError::Other {
            address: self.client.active_endpoint(),
            status: Status::internal("the master answered with another kind of result"),
        }
    }
}
