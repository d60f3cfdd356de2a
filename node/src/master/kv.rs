//! The `Kv` gRPC service: what clients call on the active master.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::MasterError;
use super::watch::WatchSpec;
use super::write::{ClientWrite, Mutation, Written};
use super::{Master, Role, lock};
use crate::metrics;
use crate::pipeline;
use crate::proto::kv_op::Op;
use crate::proto::kv_result::Result as Outcome;
use crate::proto::kv_server::Kv;
use crate::proto::{
    CompactReply, CompactRequest, DeleteReply, DeleteRequest, DrainReply, DrainRequest, KeyVersion,
    ListReply, ListRequest, ReadReply, ReadRequest, SlaveStatus, SnapshotChunk, SnapshotRequest,
    StatusReply, StatusRequest, WatchBatch, WatchRequest, WriteReply, WriteRequest,
};
use crate::proto::{KvBatch, KvOp, KvResult, KvResults};
use crate::version::Expect;

/// Runs a request, counting it by result and timing it.
async fn measured<T>(
    op: &'static str,
    request: impl Future<Output = Result<T, MasterError>>,
) -> Result<T, MasterError> {
    let timer = metrics::master()
        .request_duration
        .with_label_values(&[op])
        .start_timer();
    let result = request.await;
    timer.observe_duration();
    metrics::master()
        .requests
        .with_label_values(&[
            op,
            result
                .as_ref()
                .map_or_else(MasterError::metric_label, |_| "ok"),
        ])
        .inc();
    result
}

/// The reply to a WRITE.
fn reply(written: Written) -> WriteReply {
    WriteReply {
        version: written.version.map(Into::into),
        deduplicated: written.deduplicated,
    }
}

/// The reply to a DELETE.
fn deleted(written: Written) -> DeleteReply {
    DeleteReply {
        version: written.version.map(Into::into),
        deduplicated: written.deduplicated,
    }
}

/// The key a pipelined op is about: ops on one key run in the order sent.
fn op_key(op: &KvOp) -> Option<Bytes> {
    match &op.op {
        Some(Op::Read(read)) => Some(Bytes::copy_from_slice(&read.key)),
        Some(Op::Write(write)) => Some(Bytes::copy_from_slice(&write.key)),
        Some(Op::Delete(delete)) => Some(Bytes::copy_from_slice(&delete.key)),
        None => None,
    }
}

impl Master {
    /// A WRITE request, unary or pipelined.
    async fn write_request(&self, request: WriteRequest) -> Result<Written, MasterError> {
        let mutation = Mutation {
            key: Bytes::from(request.key),
            value: Some(Bytes::from(request.value)),
            expect: Expect::from_proto(request.condition).map_err(MasterError::invalid)?,
            client: ClientWrite::from_request(
                request.client_id,
                request.client_seq,
                request.client_answered_below,
            ),
        };
        self.apply(mutation).await
    }

    /// A DELETE request, unary or pipelined.
    async fn delete_request(&self, request: DeleteRequest) -> Result<Written, MasterError> {
        let expect = Expect::from_proto(request.condition).map_err(MasterError::invalid)?;
        if expect == Some(Expect::Absent) {
            return Err(MasterError::invalid(
                "a DELETE can only be conditional on a version",
            ));
        }
        let mutation = Mutation {
            key: Bytes::from(request.key),
            value: None,
            expect,
            client: ClientWrite::from_request(
                request.client_id,
                request.client_seq,
                request.client_answered_below,
            ),
        };
        self.apply(mutation).await
    }

    /// Runs one pipelined READ or WRITE exactly like the unary call.
    async fn run_kv_op(&self, op: KvOp) -> KvResult {
        let outcome = match op.op {
            Some(Op::Read(read)) => measured("read", Master::read(self, Bytes::from(read.key)))
                .await
                .map(|(value, version)| {
                    Outcome::Read(ReadReply {
                        value: value.to_vec(),
                        version: Some(version.into()),
                    })
                }),
            Some(Op::Write(write)) => measured("write", self.write_request(write))
                .await
                .map(|written| Outcome::Write(reply(written))),
            Some(Op::Delete(delete)) => measured("delete", self.delete_request(delete))
                .await
                .map(|written| Outcome::Delete(deleted(written))),
            None => Err(MasterError::invalid("pipelined op without a request")),
        };
        KvResult {
            id: op.id,
            result: Some(
                outcome.unwrap_or_else(|error| Outcome::Error(Status::from(error).into())),
            ),
        }
    }
}

#[tonic::async_trait]
impl Kv for Master {
    type PipelineStream = ReceiverStream<Result<KvResults, Status>>;
    type WatchStream = ReceiverStream<Result<WatchBatch, Status>>;
    type SnapshotStream = ReceiverStream<Result<SnapshotChunk, Status>>;

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        let written = measured("delete", self.delete_request(request.into_inner())).await?;
        Ok(Response::new(deleted(written)))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let request = request.into_inner();
        let after = (!request.after.is_empty()).then(|| Bytes::from(request.after));
        let page = measured(
            "list",
            Master::list(
                self,
                Bytes::from(request.prefix),
                after,
                request.limit as usize,
            ),
        )
        .await?;
        let keys = page
            .keys
            .into_iter()
            .map(|(key, version)| KeyVersion {
                key: key.to_vec(),
                version: request.versions.then(|| version.into()),
                deleted: false,
            })
            .collect();
        Ok(Response::new(ListReply {
            keys,
            next: page.next.map(|k| k.to_vec()).unwrap_or_default(),
        }))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let spec = WatchSpec {
            prefix: Bytes::from(request.prefix),
            exact: request.exact,
            from_seq: request.from_seq,
            values: request.values,
        };
        Ok(Response::new(
            measured("watch", Master::watch(self, spec)).await?,
        ))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Ok(Response::new(
            measured("snapshot", Master::snapshot(self)).await?,
        ))
    }

    async fn pipeline(
        &self,
        request: Request<Streaming<KvBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        // A standby refuses the whole stream, naming the active master.
        self.serving_term()?;
        let master = self
            .me
            .upgrade()
            .ok_or_else(|| MasterError::unavailable("shutting down"))?;
        let stopping = self.stopping.clone();
        Ok(Response::new(pipeline::serve(
            request.into_inner(),
            |batch| batch.ops,
            op_key,
            move |op| {
                let master = master.clone();
                async move { master.run_kv_op(op).await }
            },
            |results| KvResults { results },
            stopping,
        )))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let key = Bytes::from(request.into_inner().key);
        let (value, version) = measured("read", Master::read(self, key)).await?;
        Ok(Response::new(ReadReply {
            value: value.to_vec(),
            version: Some(version.into()),
        }))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let written = measured("write", self.write_request(request.into_inner())).await?;
        Ok(Response::new(reply(written)))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let config = self.config();
        let r = config.replication_factor;
        let mut reply = StatusReply {
            replication_factor: r,
            configured_slaves: config.slaves,
            address: config.advertise.clone(),
            log_end_seq: self.log_end_seq.load(Ordering::SeqCst),
            ..Default::default()
        };
        let role = self.role();
        reply.set_role(role.reported());
        match role {
            Role::Standby { leader } => {
                reply.leader = leader;
                reply.keys = lock(&self.index).len() as u64;
            }
            Role::TakingOver { epoch, .. } => {
                reply.epoch = epoch;
                reply.keys = lock(&self.index).len() as u64;
            }
            Role::Active(term) => {
                reply.epoch = term.epoch;
                reply.leader = config.advertise.clone();
                let view = lock(&self.slaves).view();
                let index = lock(&self.index);
                reply.keys = index.len() as u64;
                let placeable: Vec<u32> = view
                    .iter()
                    .filter(|s| s.live && !s.draining)
                    .map(|s| s.handle.idx)
                    .collect();
                reply.under_replicated_keys =
                    index.count_under_replicated(r as usize, |i| placeable.contains(&i)) as u64;
                reply.slaves = view
                    .iter()
                    .map(|s| SlaveStatus {
                        id: s.handle.id.clone(),
                        address: s.handle.address.clone(),
                        live: s.live,
                        keys: index.count_held_by(s.handle.idx) as u64,
                        reads: s.handle.reads.get(),
                        writes: s.handle.writes.get(),
                        draining: s.draining,
                    })
                    .collect();
            }
        }
        Ok(Response::new(reply))
    }

    async fn compact(
        &self,
        _request: Request<CompactRequest>,
    ) -> Result<Response<CompactReply>, Status> {
        Ok(Response::new(
            measured("compact", Master::compact(self)).await?,
        ))
    }

    async fn drain(&self, request: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        let slave_id = request.into_inner().slave_id;
        let moved_keys = measured("drain", Master::drain(self, &slave_id)).await?;
        Ok(Response::new(DrainReply { moved_keys }))
    }
}
