//! A client that sends READs and WRITEs to one master over `Kv.Pipeline`:
//! many requests in flight on one stream, batched, for callers that need
//! throughput more than failover (the bench). Each op has exactly the
//! semantics of the unary call; errors come back as the same statuses, but
//! nothing is retried and no "not leader" answer is followed — find the
//! active master first (for example with [`super::Client::status`]).

use std::time::Duration;

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::ClientError;
use crate::limits::CLIENT_MAX_MESSAGE_BYTES;
use crate::pipeline::{self, Pipe, Protocol};
use crate::proto::kv_client::KvClient;
use crate::proto::kv_op::Op;
use crate::proto::kv_result::Result as Outcome;
use crate::proto::{KvBatch, KvOp, KvResults, ReadRequest, WriteRequest};
use crate::security::{self, BearerToken, ClientSecurity};
use crate::version::Version;

/// `Kv.Pipeline` as a [`Protocol`].
struct KvPipeline(KvClient<InterceptedService<Channel, BearerToken>>);

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

/// A pipelined connection to one master. Cheap to share: every task may
/// call it concurrently, and their requests share the stream.
#[derive(Debug)]
pub struct PipelinedClient {
    address: String,
    timeout: Duration,
    pipe: Pipe<KvPipeline>,
    /// Numbers WRITEs like [`super::Client`] does.
    numbering: super::numbering::Numbering,
}

impl PipelinedClient {
    /// Prepares a connection to the master at `address` (`host:port`); it
    /// is opened on first use. `timeout` bounds each request.
    ///
    /// # Errors
    /// [`ClientError::BadAddress`] when `address` is not `host:port`.
    pub fn new(address: &str, timeout: Duration) -> Result<PipelinedClient, ClientError> {
        PipelinedClient::with_security(address, timeout, &ClientSecurity::default())
    }

    /// [`PipelinedClient::new`] with TLS and a token (see
    /// [`crate::security`]).
    ///
    /// # Errors
    /// [`ClientError::BadAddress`] when `address` is not `host:port` or the
    /// TLS files no longer load.
    pub fn with_security(
        address: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<PipelinedClient, ClientError> {
        let endpoint = security::endpoint(address, security.tls.as_ref()).map_err(|reason| {
            ClientError::BadAddress {
                address: address.to_owned(),
                reason,
            }
        })?;
        let client = KvClient::with_interceptor(
            endpoint
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .connect_lazy(),
            security.token.clone(),
        )
        .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES);
        Ok(PipelinedClient {
            address: address.to_owned(),
            timeout,
            pipe: Pipe::new(KvPipeline(client)),
            numbering: super::numbering::Numbering::default(),
        })
    }

    async fn call(&self, op: Op) -> Result<Outcome, ClientError> {
        let answer = tokio::time::timeout(self.timeout, self.pipe.call(op))
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no answer within {:?}", self.timeout)))
            .and_then(|r| r);
        answer.map_err(|status| match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(status.message().to_owned()),
            Code::NotFound => ClientError::NotFound(status.message().to_owned()),
            _ => ClientError::Other {
                address: self.address.clone(),
                status,
            },
        })
    }

    /// Like [`super::Client::read`], without retries.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn read(&self, key: &[u8]) -> Result<Option<(Bytes, Version)>, ClientError> {
        match self.call(Op::Read(ReadRequest { key: key.to_vec() })).await {
            Ok(Outcome::Read(reply)) => Ok(Some((
                Bytes::from(reply.value),
                reply.version.map(Version::from).unwrap_or_default(),
            ))),
            Ok(_) => Err(self.wrong_kind()),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`super::Client::write`], without retries.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<Version, ClientError> {
        let number = self.numbering.next();
        let op = Op::Write(WriteRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            client_id: number.client,
            client_seq: number.seq,
            client_answered_below: number.answered_below(),
            condition: None,
        });
        match self.call(op).await? {
            Outcome::Write(reply) => Ok(reply.version.map(Version::from).unwrap_or_default()),
            _ => Err(self.wrong_kind()),
        }
    }

    fn wrong_kind(&self) -> ClientError {
        ClientError::Other {
            address: self.address.clone(),
            status: Status::internal("the master answered with another kind of result"),
        }
    }
}
