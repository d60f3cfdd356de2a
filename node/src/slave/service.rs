//! The slave's gRPC `Replica` service: what the active master calls to store,
//! fetch and list versioned values, and to fence the slave.
//!
//! Invariant enforced here (**fencing**): every request carries the epoch of
//! the master that sent it. A request whose epoch is below the slave's fenced
//! epoch is refused with FAILED_PRECONDITION (`stale epoch E < fenced epoch F`,
//! with `F` also in the `dsm-epoch` response metadata), so a deposed master
//! can neither write nor read once the new master has fenced this slave. A
//! higher epoch is legitimate (a newer master) and raises the fenced epoch
//! before the request is served. For Put the check happens inside the store's
//! write transaction ([`Store::put_fenced`]), for Get inside the read
//! transaction that reads the value ([`Store::get_fenced`]), so both are ordered
//! with Fence. Checked by `tests::stale_put_is_rejected_and_value_unchanged` and
//! `tests::fence_rejects_older_put_and_get`.
//!
//! Requests are validated defensively (the master enforces the user-facing
//! limits): a key over [`MAX_KEY_BYTES`] or a value over [`MAX_VALUE_BYTES`]
//! is refused with INVALID_ARGUMENT naming the limit.

use bytes::Bytes;
use dsm_wire::metadata;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::store::{Held, PutOutcome, Store, StoreError};
use crate::pipeline;
use crate::proto;
use crate::proto::replica_server::{Replica, ReplicaServer};
use crate::version::Version;

/// Largest key a slave accepts (the master's user-facing limit is lower).
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Largest value a slave accepts: a hard cap above any configurable
/// user-facing limit.
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// Largest gRPC message the Replica server decodes or encodes: one maximal
/// key and value plus room for the other fields. Masters must configure
/// their `ReplicaClient` with at least this for both directions.
pub const MAX_MESSAGE_BYTES: usize = MAX_VALUE_BYTES + MAX_KEY_BYTES + 4096;
/// Entries per streamed [`proto::InventoryChunk`].
pub const INVENTORY_CHUNK: usize = 1024;

/// Implementation of the `Replica` service over a [`Store`].
#[derive(Clone, Debug)]
pub struct ReplicaService {
    /// Where values and the fenced epoch live.
    store: Store,
    /// Cancelled when the slave shuts down: pipelined streams then take no
    /// new work, finish what they have, and end.
    stopping: CancellationToken,
}

impl ReplicaService {
    /// A service answering from `store`.
    pub fn new(store: Store) -> Self {
        ReplicaService {
            store,
            stopping: CancellationToken::new(),
        }
    }

    /// Cancel it to start shutting down (see the field).
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Wraps the service in its tonic server with message limits that admit
    /// a maximal key and value ([`MAX_MESSAGE_BYTES`]).
    pub fn into_server(self) -> ReplicaServer<Self> {
        ReplicaServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Fencing check for reads: refuses an epoch below the fenced one,
    /// raises the fenced epoch to a higher one.
    async fn check_epoch(&self, epoch: u64) -> Result<(), Status> {
        let mut fenced = self.store.epoch();
        if epoch > fenced {
            fenced = self.store.raise_epoch(epoch).await.map_err(store_status)?;
        }
        if epoch < fenced {
            return Err(stale_epoch(epoch, fenced));
        }
        Ok(())
    }
}

/// The FAILED_PRECONDITION answer to a deposed master.
fn stale_epoch(epoch: u64, fenced: u64) -> Status {
    tracing::warn!(epoch, fenced, "refused request from a deposed master");
    let mut status =
        Status::failed_precondition(format!("stale epoch {epoch} < fenced epoch {fenced}"));
    if let Ok(v) = fenced.to_string().parse() {
        status.metadata_mut().insert(metadata::EPOCH, v);
    }
    status
}

/// Maps a store failure to a gRPC status: UNAVAILABLE while shutting down,
/// INVALID_ARGUMENT for a put too large to store, INTERNAL otherwise.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Closed => Status::unavailable("slave is shutting down"),
        e @ StoreError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
        e => {
            tracing::error!(error = %e, "slave store failure");
            Status::internal(e.to_string())
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "key is {} bytes, over the slave's limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Counts a served request by operation and result.
fn count<T>(op: &str, result: Result<T, Status>) -> Result<T, Status> {
    crate::metrics::slave()
        .requests
        .with_label_values(&[op, crate::metrics::result_label(&result)])
        .inc();
    result
}

impl ReplicaService {
    /// Stores one value (the body of Put, unary or pipelined).
    async fn put_one(&self, req: proto::PutRequest) -> Result<proto::PutReply, Status> {
        check_key(&req.key)?;
        if req.value.len() > MAX_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes, over the slave's limit of {MAX_VALUE_BYTES} bytes",
                req.value.len()
            )));
        }
        let version: Version = req
            .version
            .ok_or_else(|| Status::invalid_argument("version is required"))?
            .into();
        if req.tombstone && !req.value.is_empty() {
            return Err(Status::invalid_argument("a tombstone carries no value"));
        }
        let value = (!req.tombstone).then(|| Bytes::from(req.value));
        let outcome = self
            .store
            .put_fenced(req.epoch, Bytes::from(req.key), value, version, req.force)
            .await
            .map_err(store_status)?;
        match outcome {
            PutOutcome::Stored => Ok(proto::PutReply { stored: true }),
            PutOutcome::Superseded { current } => {
                tracing::debug!(%version, %current, "put superseded by a version already held");
                Ok(proto::PutReply { stored: false })
            }
            PutOutcome::StaleEpoch { fenced } => Err(stale_epoch(req.epoch, fenced)),
        }
    }

    /// Reads one value (the body of Get, unary or pipelined).
    async fn get_one(&self, req: proto::GetRequest) -> Result<proto::GetReply, Status> {
        check_key(&req.key)?;
        // Inline, not on the blocking pool: an index lookup and a read of
        // the page cache take microseconds, far less than the thread hand-off
        // (the profile showed context switches dominating).
        let found = self
            .store
            .get_fenced(req.epoch, &req.key)
            .await
            .map_err(store_status)?
            .map_err(|fenced| stale_epoch(req.epoch, fenced))?;
        Ok(match found {
            Some(Held {
                version,
                value: Some(value),
            }) => proto::GetReply {
                found: true,
                value: value.into(),
                version: Some(version.into()),
                deleted: false,
            },
            Some(Held {
                version,
                value: None,
            }) => proto::GetReply {
                found: false,
                value: Vec::new(),
                version: Some(version.into()),
                deleted: true,
            },
            None => proto::GetReply::default(),
        })
    }

    /// Raises the fenced epoch (the body of Fence, unary or pipelined); the
    /// reply carries the epoch after the call, higher than asked when the
    /// caller has been deposed.
    async fn fence_one(&self, req: proto::FenceRequest) -> Result<proto::FenceReply, Status> {
        let before = self.store.epoch();
        let epoch = self
            .store
            .raise_epoch(req.epoch)
            .await
            .map_err(store_status)?;
        if epoch > before {
            tracing::info!(requested = req.epoch, epoch, "fenced");
        }
        Ok(proto::FenceReply { epoch })
    }

    /// Runs one pipelined op and turns its outcome into a result message.
    async fn run_op(&self, op: proto::ReplicaOp) -> proto::ReplicaResult {
        use proto::replica_op::Op;
        use proto::replica_result::Result as Outcome;
        let outcome = match op.op {
            Some(Op::Put(put)) => count("put", self.put_one(put).await).map(Outcome::Put),
            Some(Op::Get(get)) => count("get", self.get_one(get).await).map(Outcome::Get),
            Some(Op::Fence(fence)) => {
                count("fence", self.fence_one(fence).await).map(Outcome::Fence)
            }
            None => Err(Status::invalid_argument("pipelined op without a request")),
        };
        proto::ReplicaResult {
            id: op.id,
            result: Some(outcome.unwrap_or_else(|status| Outcome::Error(status.into()))),
        }
    }
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutReply>, Status> {
        count("put", self.put_one(request.into_inner()).await).map(Response::new)
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        count("get", self.get_one(request.into_inner()).await).map(Response::new)
    }

    type PipelineStream = ReceiverStream<Result<proto::ReplicaResults, Status>>;

    /// Puts and Gets batched on one stream; Puts of a batch meet in the
    /// store's group commit (see [`crate::pipeline::serve`]).
    async fn pipeline(
        &self,
        request: Request<Streaming<proto::ReplicaBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let service = self.clone();
        Ok(Response::new(pipeline::serve(
            request.into_inner(),
            |batch| batch.ops,
            // Unordered: versions order a key's Puts, and concurrent Puts of
            // one key should share a commit.
            |_| None,
            move |op| {
                let service = service.clone();
                async move { service.run_op(op).await }
            },
            |results| proto::ReplicaResults { results },
            self.stopping.clone(),
        )))
    }

    async fn fence(
        &self,
        request: Request<proto::FenceRequest>,
    ) -> Result<Response<proto::FenceReply>, Status> {
        count("fence", self.fence_one(request.into_inner()).await).map(Response::new)
    }

    type InventoryStream = ReceiverStream<Result<proto::InventoryChunk, Status>>;

    async fn inventory(
        &self,
        request: Request<proto::InventoryRequest>,
    ) -> Result<Response<Self::InventoryStream>, Status> {
        self.check_epoch(request.into_inner().epoch).await?;
        // A small queue: the blocking scan runs at most two chunks ahead of
        // the network, so a slow master does not make us buffer the keyspace.
        let (tx, rx) = mpsc::channel(2);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for chunk in store.inventory(INVENTORY_CHUNK) {
                let item = chunk
                    .map(|entries| proto::InventoryChunk {
                        entries: entries
                            .into_iter()
                            .map(|(key, version, deleted)| proto::KeyVersion {
                                key: key.into(),
                                version: Some(version.into()),
                                deleted,
                            })
                            .collect(),
                    })
                    .map_err(store_status);
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    // The caller went away, or the scan failed and said so.
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::replica_client::ReplicaClient;
    use std::time::Duration;
    use tonic::Code;
    use tonic::transport::{Channel, Server};

    const LIMIT: Duration = Duration::from_secs(30);

    /// Serves a fresh store on 127.0.0.1:0 and returns a client to it.
    async fn start() -> (tempfile::TempDir, Store, ReplicaClient<Channel>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "s1").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ReplicaService::new(store.clone()).into_server();
        tokio::spawn(async move {
            Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        let client = ReplicaClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        (dir, store, client)
    }

    fn put(key: &str, value: &str, version: Version, epoch: u64, force: bool) -> proto::PutRequest {
        proto::PutRequest {
            key: key.into(),
            value: value.into(),
            version: Some(version.into()),
            epoch,
            force,
            tombstone: false,
        }
    }

    fn get(key: &str, epoch: u64) -> proto::GetRequest {
        proto::GetRequest {
            key: key.into(),
            epoch,
        }
    }

    #[tokio::test]
    async fn stale_put_is_rejected_and_value_unchanged() {
        tokio::time::timeout(LIMIT, async {
            let (_dir, store, mut client) = start().await;
            let reply = client
                .put(put("k", "a", Version::new(5, 1), 5, false))
                .await
                .unwrap();
            assert!(reply.into_inner().stored);
            assert_eq!(store.epoch(), 5, "a newer master's put raises the epoch");
            // Even forced, and with a version that would otherwise win.
            let err = client
                .put(put("k", "b", Version::new(6, 1), 4, true))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert_eq!(err.message(), "stale epoch 4 < fenced epoch 5");
            assert_eq!(
                err.metadata()
                    .get(metadata::EPOCH)
                    .and_then(|v| v.to_str().ok()),
                Some("5")
            );
            let got = client.get(get("k", 5)).await.unwrap().into_inner();
            assert!(got.found);
            assert_eq!(got.value, b"a");
            assert_eq!(got.version, Some(Version::new(5, 1).into()));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn fence_rejects_older_put_and_get() {
        tokio::time::timeout(LIMIT, async {
            let (_dir, _store, mut client) = start().await;
            let ok = client
                .put(put("k", "v", Version::new(1, 1), 1, false))
                .await
                .unwrap();
            assert!(ok.into_inner().stored);
            let fenced = client
                .fence(proto::FenceRequest { epoch: 3 })
                .await
                .unwrap();
            assert_eq!(fenced.into_inner().epoch, 3);
            // A lower fence reports the higher epoch: the caller is deposed.
            let fenced = client
                .fence(proto::FenceRequest { epoch: 2 })
                .await
                .unwrap();
            assert_eq!(fenced.into_inner().epoch, 3);

            let err = client
                .put(put("k", "w", Version::new(1, 2), 1, false))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            let err = client.get(get("k", 2)).await.unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert_eq!(err.message(), "stale epoch 2 < fenced epoch 3");
            let err = client
                .inventory(proto::InventoryRequest { epoch: 1 })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);

            let got = client.get(get("k", 3)).await.unwrap().into_inner();
            assert_eq!(got.value, b"v");
            let missing = client.get(get("nope", 3)).await.unwrap().into_inner();
            assert!(!missing.found);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn equal_version_is_acked_not_stored() {
        tokio::time::timeout(LIMIT, async {
            let (_dir, _store, mut client) = start().await;
            let first = client
                .put(put("k", "a", Version::new(1, 1), 1, false))
                .await
                .unwrap();
            assert!(first.into_inner().stored);
            let again = client
                .put(put("k", "b", Version::new(1, 1), 1, false))
                .await
                .unwrap();
            assert!(!again.into_inner().stored);
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn inventory_streams_every_key_in_chunks() {
        tokio::time::timeout(LIMIT, async {
            let (_dir, store, mut client) = start().await;
            let n = 3000u64;
            // Concurrent puts share commits, which keeps this fast.
            let puts = (0..n).map(|i| {
                store.put(
                    Bytes::from(format!("key-{i:05}")),
                    Bytes::from_static(b"v"),
                    Version::new(1, i),
                    false,
                )
            });
            for stored in futures::future::join_all(puts).await {
                assert!(stored.unwrap());
            }
            let mut stream = client
                .inventory(proto::InventoryRequest { epoch: 1 })
                .await
                .unwrap()
                .into_inner();
            let mut chunks = 0;
            let mut seen = Vec::new();
            while let Some(chunk) = stream.message().await.unwrap() {
                assert!(!chunk.entries.is_empty());
                assert!(chunk.entries.len() <= INVENTORY_CHUNK);
                chunks += 1;
                seen.extend(chunk.entries);
            }
            assert_eq!(chunks, 3);
            assert_eq!(seen.len() as u64, n);
            for (i, kv) in seen.iter().enumerate() {
                assert_eq!(kv.key, format!("key-{i:05}").into_bytes());
                assert_eq!(kv.version, Some(Version::new(1, i as u64).into()));
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn bad_requests_are_refused_clearly() {
        tokio::time::timeout(LIMIT, async {
            let (_dir, store, mut client) = start().await;
            let mut no_version = put("k", "v", Version::new(1, 1), 1, false);
            no_version.version = None;
            let err = client.put(no_version).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert_eq!(err.message(), "version is required");

            let big_key = "x".repeat(MAX_KEY_BYTES + 1);
            let err = client
                .put(put(&big_key, "v", Version::new(1, 1), 1, false))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains("65536"), "{}", err.message());

            let err = client.get(get("", 1)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert_eq!(store.len().unwrap(), 0);
        })
        .await
        .unwrap();
    }
}
