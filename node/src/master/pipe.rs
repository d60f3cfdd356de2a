//! The master's end of a slave's `Replica.Pipeline` stream: every Put and
//! Get the master sends to one slave travels on one long-lived stream,
//! batched with whatever else is waiting (see [`crate::pipeline`]).

use tonic::Status;
use tonic::transport::Channel;

use crate::pipeline::{Pipe, Protocol};
use crate::proto::replica_client::ReplicaClient;
use crate::proto::replica_op::Op;
use crate::proto::replica_result::Result as Outcome;
use crate::proto::{
    GetReply, GetRequest, PutReply, PutRequest, ReplicaBatch, ReplicaOp, ReplicaResults,
};

/// `Replica.Pipeline` as a [`Protocol`].
pub struct ReplicaPipeline(ReplicaClient<Channel>);

impl Protocol for ReplicaPipeline {
    type Op = Op;
    type Outcome = Outcome;
    type Batch = ReplicaBatch;
    type Results = ReplicaResults;

    fn batch(ops: Vec<(u64, Op)>) -> ReplicaBatch {
        ReplicaBatch {
            ops: ops
                .into_iter()
                .map(|(id, op)| ReplicaOp { id, op: Some(op) })
                .collect(),
        }
    }

    fn results(results: ReplicaResults) -> Vec<(u64, Result<Outcome, Status>)> {
        results
            .results
            .into_iter()
            .map(|r| {
                let outcome = match r.result {
                    Some(Outcome::Error(e)) => Err(e.into()),
                    Some(outcome) => Ok(outcome),
                    None => Err(Status::internal("slave sent an empty pipelined result")),
                };
                (r.id, outcome)
            })
            .collect()
    }

    async fn open(
        &mut self,
        batches: tokio_stream::wrappers::ReceiverStream<ReplicaBatch>,
    ) -> Result<tonic::Streaming<ReplicaResults>, Status> {
        Ok(self.0.pipeline(batches).await?.into_inner())
    }
}

/// Handle on one slave's pipeline; answers like the unary calls.
#[derive(Debug)]
pub struct SlavePipe(Pipe<ReplicaPipeline>);

impl SlavePipe {
    /// Starts the pipeline for the slave behind `client`.
    pub fn new(client: ReplicaClient<Channel>) -> SlavePipe {
        SlavePipe(Pipe::new(ReplicaPipeline(client)))
    }

    /// A Put, answered like the unary `Replica.Put`.
    pub async fn put(&self, request: PutRequest) -> Result<PutReply, Status> {
        match self.0.call(Op::Put(request)).await? {
            Outcome::Put(reply) => Ok(reply),
            _ => Err(Status::internal(
                "slave answered a Put with another kind of result",
            )),
        }
    }

    /// A Get, answered like the unary `Replica.Get`.
    pub async fn get(&self, request: GetRequest) -> Result<GetReply, Status> {
        match self.0.call(Op::Get(request)).await? {
            Outcome::Get(reply) => Ok(reply),
            _ => Err(Status::internal(
                "slave answered a Get with another kind of result",
            )),
        }
    }
}
