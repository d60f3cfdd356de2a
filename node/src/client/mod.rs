//! The failover client: how a program talks to "the DSM cluster" without
//! knowing which master-capable process is active right now.
//!
//! [`Client`] is given the master-capable addresses (master first, then the
//! backup) and implements the clients' failover policy: try the endpoint believed
//! active, follow a standby's `dsm-leader` hint, move on when an endpoint is
//! down or does not answer within the per-request timeout, and when every
//! endpoint has failed back off (exponential, full jitter) and try again until
//! the retry budget is spent. It is used by `dsm client` (one-shot commands
//! and the REPL, in [`cli`] and [`repl`], which print answers as [`render`]
//! shows them), by tests, and by the bench.
//!
//! Errors that are the caller's (INVALID_ARGUMENT, NOT_FOUND, …) are returned
//! at once: retrying them elsewhere cannot help.
//!
//! Here: the API ([`Client`], [`Watch`]) and its configuration. The call loop
//! that every method goes through (endpoints, leader hints, timeouts,
//! backoff, which answers are final) is in `failover.rs`; the errors
//! ([`ClientError`]) in `error.rs`; [`pipelined`] is the same client over
//! one stream per master, for throughput (the bench).

pub mod cli;
mod error;
mod failover;
pub mod numbering;
pub mod pipelined;
pub mod render;
pub mod repl;

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use dsm_wire::Role;
use tonic::{Code, Status};

use crate::proto;
use crate::security::ClientSecurity;
use crate::version::{Expect, Version};
use failover::{Failure, Peer, State, classify, make_peer, strip, with_timeout};

pub use cli::{ClientArgs, run};
pub use error::{ClientError, EndpointError};

/// How a [`Client`] finds and talks to the active master.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Master-capable addresses (`host:port` or `http://host:port`), master
    /// first, then the backup. The first one is tried first.
    pub endpoints: Vec<String>,
    /// Limit for one attempt (connecting included) against one endpoint.
    /// Default 2 s; a paused (SIGSTOP) master is detected this way.
    pub timeout: Duration,
    /// How long to keep retrying when no endpoint answers: a new attempt is
    /// not started after this much time has passed since the call began.
    /// Should exceed the failover time so a call survives a master failure.
    pub retry_for: Duration,
}

impl ClientConfig {
    /// Config with the default timeout (2 s) and retry budget (10 s).
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: Vec::new(),
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(10),
        }
    }
}

/// One page of a LIST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// The keys, in key order, with their versions when asked for.
    pub keys: Vec<(Bytes, Option<Version>)>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<Bytes>,
}

/// What to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Key prefix (empty: every key).
    pub prefix: Bytes,
    /// Only the key equal to `prefix`.
    pub exact: bool,
    /// First seq wanted; 0: from now.
    pub from_seq: u64,
    /// Receive the values of WRITEs.
    pub values: bool,
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Bytes,
    /// The change's version (its seq is its log position).
    pub version: Version,
    /// A DELETE.
    pub deleted: bool,
    /// The value of a WRITE, when values were asked for.
    pub value: Bytes,
}

/// A running WATCH: every change of the watched keys in log order. It
/// survives failovers: when its stream breaks it asks whichever master is
/// active to go on from the last position it saw, so no change is missed and
/// none is repeated.
pub struct Watch<'a> {
    client: &'a Client,
    /// `from_seq` is where the next stream starts: one past what was seen.
    options: WatchOptions,
    stream: Option<tonic::Streaming<proto::WatchBatch>>,
    pending: std::collections::VecDeque<Change>,
}

impl Watch<'_> {
    async fn open(&mut self) -> Result<(), ClientError> {
        let mut stream = self.client.open_watch(&self.options).await?;
        // The first batch says where "from now" starts.
        match stream.message().await {
            Ok(Some(first)) => self.options.from_seq = first.position + 1,
            Ok(None) => {}
            Err(status) => return Err(watch_error(status)),
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// The next change, waiting for one; `None` never (a watch ends only by
    /// an error).
    ///
    /// # Errors
    /// [`ClientError::Compacted`] when the watch fell behind a compaction,
    /// a limit refusal when it was too slow, or [`ClientError::Unavailable`]
    /// when no master could resume it within the retry budget.
    pub async fn next(&mut self) -> Result<Change, ClientError> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(batch)) => {
                    for change in batch.changes {
                        let version = change.version.map(Version::from).unwrap_or_default();
                        if version.seq < self.options.from_seq {
                            continue;
                        }
                        self.options.from_seq = version.seq + 1;
                        self.pending.push_back(Change {
                            key: Bytes::from(change.key),
                            version,
                            deleted: change.deleted,
                            value: Bytes::from(change.value),
                        });
                    }
                    self.options.from_seq = self.options.from_seq.max(batch.position + 1);
                }
                Ok(None) => self.stream = None,
                Err(status) => match status.code() {
                    Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument => {
                        return Err(watch_error(status));
                    }
                    // The master went or stepped down: resume elsewhere.
                    _ => self.stream = None,
                },
            }
        }
    }

    /// The position the watch has reached: every change up to it was
    /// returned (or not watched).
    pub fn position(&self) -> u64 {
        self.options.from_seq.saturating_sub(1)
    }
}

fn watch_error(status: Status) -> ClientError {
    match classify("", status) {
        Failure::Fatal(e) => e,
        Failure::Retry(error) | Failure::NotLeader(error) => ClientError::Unavailable {
            attempts: 1,
            last_errors: vec![EndpointError {
                address: String::new(),
                error,
            }],
        },
    }
}

/// A failover client for the `Kv` service. Cheap to share: every method takes
/// `&self` and may be called concurrently (wrap it in an `Arc`).
#[derive(Debug)]
pub struct Client {
    timeout: Duration,
    retry_for: Duration,
    /// TLS and token for every endpoint, learned ones included.
    security: ClientSecurity,
    /// Numbers WRITEs, so that retries are applied at most once.
    numbering: numbering::Numbering,
    state: Mutex<State>,
}

impl Client {
    /// Builds a client. No connection is made until the first call.
    ///
    /// Never fails: an unusable address (not a valid URI) is reported by
    /// every call that gets to it, and a client without any usable address
    /// fails each call at once. Use [`Client::try_new`] to reject such a
    /// configuration up front.
    ///
    /// # Panics
    /// Outside a Tokio runtime: each endpoint's channel spawns its
    /// connection task there.
    pub fn new(config: ClientConfig) -> Self {
        Client::with_security(config, ClientSecurity::default())
    }

    /// Like [`Client::new`], talking TLS and sending a token as `security`
    /// says (see [`crate::security`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime, as [`Client::new`].
    pub fn with_security(config: ClientConfig, security: ClientSecurity) -> Self {
        let mut peers: Vec<Peer> = Vec::new();
        for address in config.endpoints.iter().map(|a| a.trim()) {
            if address.is_empty() || peers.iter().any(|p| p.address == strip(address)) {
                continue;
            }
            peers.push(make_peer(address, config.timeout, security.tls.as_ref()));
        }
        Client {
            timeout: config.timeout,
            retry_for: config.retry_for,
            security,
            numbering: numbering::Numbering::default(),
            state: Mutex::new(State { peers, active: 0 }),
        }
    }

    /// Like [`Client::new`], but rejects a configuration with a bad address.
    ///
    /// # Errors
    /// [`ClientError::NoEndpoints`] when `endpoints` holds no non-empty
    /// address, [`ClientError::BadAddress`] for the first address that is
    /// not a valid `host:port`.
    ///
    /// # Panics
    /// Outside a Tokio runtime, as [`Client::new`].
    pub fn try_new(config: ClientConfig) -> Result<Self, ClientError> {
        Client::try_with_security(config, ClientSecurity::default())
    }

    /// [`Client::try_new`] with TLS and a token, as [`Client::with_security`].
    ///
    /// # Errors
    /// As [`Client::try_new`].
    ///
    /// # Panics
    /// Outside a Tokio runtime, as [`Client::new`].
    pub fn try_with_security(
        config: ClientConfig,
        security: ClientSecurity,
    ) -> Result<Self, ClientError> {
        let client = Client::with_security(config, security);
        {
            let state = client.lock();
            if state.peers.is_empty() {
                return Err(ClientError::NoEndpoints);
            }
            if let Some(e) = state.peers.iter().find_map(Peer::bad_address) {
                return Err(e);
            }
        }
        Ok(client)
    }

    /// Address of the endpoint the client believes active (the one it will
    /// try first), e.g. for a prompt.
    pub fn active_endpoint(&self) -> String {
        let state = self.lock();
        state
            .peers
            .get(state.active)
            .map(|p| p.address.clone())
            .unwrap_or_default()
    }

    /// Every endpoint the client knows, configured and learned, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock()
            .peers
            .iter()
            .map(|p| p.address.clone())
            .collect()
    }

    /// Reads `key`: its latest acknowledged value and version, or `None`
    /// when the key was never written.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn read(&self, key: &[u8]) -> Result<Option<(Bytes, Version)>, ClientError> {
        let result = self
            .call(|mut kv, timeout| {
                let request = with_timeout(proto::ReadRequest { key: key.to_vec() }, timeout);
                async move { kv.read(request).await }
            })
            .await;
        match result {
            Ok(reply) => Ok(Some((
                Bytes::from(reply.value),
                reply.version.map(Version::from).unwrap_or_default(),
            ))),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `key` only if the key is as `expect` says
    /// (compare-and-set), and returns the version the master gave it.
    ///
    /// # Errors
    /// [`ClientError::ConditionFailed`] (nothing changed) with the key's
    /// current version; otherwise as [`Client::write`].
    pub async fn write_if(
        &self,
        key: &[u8],
        value: &[u8],
        expect: Expect,
    ) -> Result<Version, ClientError> {
        self.write_with(key, value, Some(expect)).await
    }

    /// Writes `value` under `key` and returns the version the master gave it.
    ///
    /// Exactly once: when an attempt times out, the master is lost mid-call,
    /// or it answers UNAVAILABLE (no write quorum: the write is in the log and
    /// is applied once slaves return), the outcome of that attempt is unknown
    /// and the write is sent again, possibly to the new master, under the same
    /// number; a master that already applied it answers with the original
    /// version instead of applying it again. An `Err` still does not prove
    /// that nothing was written: the last attempt's outcome may be unknown.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<Version, ClientError> {
        self.write_with(key, value, None).await
    }

    async fn write_with(
        &self,
        key: &[u8],
        value: &[u8],
        expect: Option<Expect>,
    ) -> Result<Version, ClientError> {
        let number = self.numbering.next();
        let reply = self
            .call(|mut kv, timeout| {
                let request = with_timeout(
                    proto::WriteRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        client_id: number.client,
                        client_seq: number.seq,
                        client_answered_below: number.answered_below(),
                        condition: expect.map(Into::into),
                    },
                    timeout,
                );
                async move { kv.write(request).await }
            })
            .await?;
        Ok(reply.version.map(Version::from).unwrap_or_default())
    }

    /// Deletes `key`; returns the version of the deletion, or `None` when the
    /// key did not exist (nothing was deleted). Exactly once, as WRITEs.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn delete(&self, key: &[u8]) -> Result<Option<Version>, ClientError> {
        self.delete_with(key, None).await
    }

    /// Deletes `key` only if its latest version is `version`.
    ///
    /// # Errors
    /// [`ClientError::ConditionFailed`] (nothing changed); see [`ClientError`].
    pub async fn delete_if(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<Option<Version>, ClientError> {
        self.delete_with(key, Some(Expect::Version(version))).await
    }

    async fn delete_with(
        &self,
        key: &[u8],
        expect: Option<Expect>,
    ) -> Result<Option<Version>, ClientError> {
        let number = self.numbering.next();
        let reply = self
            .call(|mut kv, timeout| {
                let request = with_timeout(
                    proto::DeleteRequest {
                        key: key.to_vec(),
                        condition: expect.map(Into::into),
                        client_id: number.client,
                        client_seq: number.seq,
                        client_answered_below: number.answered_below(),
                    },
                    timeout,
                );
                async move { kv.delete(request).await }
            })
            .await?;
        Ok(reply.version.map(Version::from))
    }

    /// One page of the keys starting with `prefix`, after `after`, in key
    /// order: at most `limit` (1 to 1000; 0 means 100), with their versions
    /// when `versions`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
        versions: bool,
    ) -> Result<ListPage, ClientError> {
        let reply = self
            .call(|mut kv, timeout| {
                let request = with_timeout(
                    proto::ListRequest {
                        prefix: prefix.to_vec(),
                        after: after.unwrap_or_default().to_vec(),
                        limit,
                        versions,
                    },
                    timeout,
                );
                async move { kv.list(request).await }
            })
            .await?;
        Ok(ListPage {
            keys: reply
                .keys
                .into_iter()
                .map(|k| (Bytes::from(k.key), k.version.map(Version::from)))
                .collect(),
            next: (!reply.next.is_empty()).then(|| Bytes::from(reply.next)),
        })
    }

    /// Watches the changes of `options.prefix` (see [`Watch`]).
    ///
    /// # Errors
    /// See [`ClientError`]; [`ClientError::Compacted`] when `from` is no longer
    /// complete in the log.
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch<'_>, ClientError> {
        let mut watch = Watch {
            client: self,
            options,
            stream: None,
            pending: std::collections::VecDeque::new(),
        };
        watch.open().await?;
        Ok(watch)
    }

    async fn open_watch(
        &self,
        options: &WatchOptions,
    ) -> Result<tonic::Streaming<proto::WatchBatch>, ClientError> {
        self.call(|mut kv, _timeout| {
            // No grpc-timeout: the stream lives as long as the watch.
            let request = tonic::Request::new(proto::WatchRequest {
                prefix: options.prefix.to_vec(),
                exact: options.exact,
                from_seq: options.from_seq,
                values: options.values,
            });
            async move { kv.watch(request).await }
        })
        .await
    }

    /// Starts a snapshot of the cluster: the stream of its chunks (see
    /// [`crate::snapshot::save`], which writes them to a file).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn snapshot(&self) -> Result<tonic::Streaming<proto::SnapshotChunk>, ClientError> {
        self.call(|mut kv, _timeout| {
            let request = tonic::Request::new(proto::SnapshotRequest {});
            async move { kv.snapshot(request).await }
        })
        .await
    }

    /// The active master's view of the cluster. A standby answers Status
    /// too (with its own view, useful to inspect it); when the endpoint that
    /// answered is a standby naming the active master, that master is asked
    /// instead, falling back to the standby's answer if it cannot be reached.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn status(&self) -> Result<proto::StatusReply, ClientError> {
        let reply = self.endpoint_status().await?;
        if reply.role() != Some(Role::Standby)
            || reply.leader.is_empty()
            || reply.leader == reply.address
        {
            return Ok(reply);
        }
        let leader = Client::new(ClientConfig {
            endpoints: vec![reply.leader.clone()],
            timeout: self.timeout,
            retry_for: Duration::ZERO,
        });
        match leader.endpoint_status().await {
            Ok(active) if active.role() == Some(Role::Active) => Ok(active),
            _ => Ok(reply),
        }
    }

    /// The status of whichever endpoint answers, standby or active, without
    /// following a standby to the active master: to inspect one process.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn endpoint_status(&self) -> Result<proto::StatusReply, ClientError> {
        self.call(|mut kv, timeout| {
            let request = with_timeout(proto::StatusRequest {}, timeout);
            async move { kv.status(request).await }
        })
        .await
    }

    /// Asks the active master to compact the sealed log segments now.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn compact(&self) -> Result<proto::CompactReply, ClientError> {
        self.call(|mut kv, timeout| {
            let request = with_timeout(proto::CompactRequest {}, timeout);
            async move { kv.compact(request).await }
        })
        .await
    }

    /// Moves every key off `slave_id` and stops placing writes on it.
    /// Draining is idempotent, so the retries are harmless.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown slave; see [`ClientError`].
    pub async fn drain(&self, slave_id: &str) -> Result<proto::DrainReply, ClientError> {
        self.call(|mut kv, timeout| {
            let request = with_timeout(
                proto::DrainRequest {
                    slave_id: slave_id.to_owned(),
                },
                timeout,
            );
            async move { kv.drain(request).await }
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent
        // (every update is a single assignment or push), so poisoning is
        // ignored rather than turned into a second panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
