//! The failover client: how a program talks to "the DSM cluster" without
//! knowing which master-capable process is active right now.
//!
//! [`Client`] is given the master-capable addresses (master first, then the
//! backup) and implements DESIGN §4 "Clients": try the endpoint believed
//! active, follow a standby's `dsm-leader` hint, move on when an endpoint is
//! down or does not answer within the per-request timeout, and when every
//! endpoint has failed back off (exponential, full jitter) and try again until
//! the retry budget is spent. It is used by `dsm client` (one-shot commands
//! and the REPL, in [`cli`] and [`repl`]), by tests, and by the bench.
//!
//! Errors that are the caller's (INVALID_ARGUMENT, NOT_FOUND, …) are returned
//! at once: retrying them elsewhere cannot help.

pub mod cli;
pub mod numbering;
pub mod pipelined;
pub mod repl;

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::limits::CLIENT_MAX_MESSAGE_BYTES;
use crate::proto;
use crate::proto::kv_client::KvClient;
use crate::security::{self, BearerToken, ClientSecurity, ClientTls};
use crate::version::{Expect, Version};
use crate::wire::LEADER_METADATA;

pub use cli::{ClientArgs, run};

/// First backoff delay after a round in which every endpoint failed.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Backoff ceiling: long enough not to hammer a restarting master, short
/// enough that a failover is noticed within a second of completing.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Upper bound on endpoints learned from `dsm-leader` hints, so a confused
/// (or hostile) server cannot make the client grow its list forever.
const MAX_ENDPOINTS: usize = 16;

/// How a [`Client`] finds and talks to the active master.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Master-capable addresses (`host:port` or `http://host:port`), master
    /// first, then the backup. The first one is tried first.
    pub endpoints: Vec<String>,
    /// Limit for one attempt (connecting included) against one endpoint.
    /// The seed used 2 s; a paused (SIGSTOP) master is detected this way.
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

/// The last failure seen at one endpoint, for [`ClientError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError {
    /// The endpoint's address as configured or learned.
    pub address: String,
    /// What went wrong, in words.
    pub error: String,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.address, self.error)
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A conditional WRITE or DELETE found the key in another state; nothing
    /// changed. `current` is the key's version (`None`: it does not exist).
    #[error("condition not met: the key {}; nothing was changed", match current {
        Some(v) => format!("is at version {v}"),
        None => "does not exist".to_string(),
    })]
    ConditionFailed {
        /// The key's current version.
        current: Option<Version>,
    },
    /// A WATCH asked for (or fell behind to) changes that compaction has
    /// dropped: re-read the keys, then watch from now.
    #[error(
        "changes before seq {complete_from} were compacted away: re-read the keys, then watch from now"
    )]
    Compacted {
        /// The first seq from which every change is still in the log.
        complete_from: u64,
    },
    /// The server rejected the input (empty key, key or value over the
    /// limit…); its message, which names the limit, is passed through.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server says the thing asked about does not exist (for `drain`, an
    /// unknown slave id; `read` turns a missing key into `Ok(None)`).
    #[error("not found: {0}")]
    NotFound(String),
    /// No endpoint served the call within the retry budget.
    #[error(
        "no active master reachable after {attempts} attempt(s); last errors: {} \
         (check that the master/backup addresses are right and that a master is running)",
        join(last_errors)
    )]
    Unavailable {
        /// Attempts made, over all endpoints and rounds.
        attempts: u32,
        /// The last error of each endpoint that was tried.
        last_errors: Vec<EndpointError>,
    },
    /// An address could not be turned into a gRPC endpoint.
    #[error("bad address '{address}': {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The client was given no address at all.
    #[error("no master address given")]
    NoEndpoints,
    /// Any other answer from a server, returned without retrying.
    #[error("{address} answered {}: {}", code_name(status.code()), describe(status))]
    Other {
        /// The endpoint that answered.
        address: String,
        /// Its answer.
        status: Status,
    },
}

fn join(errors: &[EndpointError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// gRPC code in the spelling of the spec (`FAILED_PRECONDITION`), which is
/// what people search for; tonic's `Display` writes sentences instead.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One master-capable process the client knows about.
#[derive(Debug)]
struct Peer {
    /// Address as given or learned, without scheme (shown to people and
    /// compared with `dsm-leader` hints).
    address: String,
    /// Created lazily: tonic connects on first use and reconnects after a
    /// failure, so one channel per endpoint is reused for every call.
    /// `Err` (with the reason) for an address that is not a valid URI: it is
    /// kept so every call's error can name it.
    channel: Result<Channel, String>,
}

/// Mutable part of the client. A std `Mutex` because it is only held to copy
/// a channel or update an index, never across an `.await`.
#[derive(Debug)]
struct State {
    peers: Vec<Peer>,
    /// Index into `peers` of the endpoint believed active.
    active: usize,
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

/// What to do after a failed attempt.
enum Failure {
    /// A standby pointed at the active master (address, possibly empty).
    NotLeader(String),
    /// The endpoint is down, slow or unreachable: try another.
    Retry(String),
    /// The answer stands: give it to the caller.
    Fatal(ClientError),
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
        if reply.role != "standby" || reply.leader.is_empty() || reply.leader == reply.address {
            return Ok(reply);
        }
        let leader = Client::new(ClientConfig {
            endpoints: vec![reply.leader.clone()],
            timeout: self.timeout,
            retry_for: Duration::ZERO,
        });
        match leader.endpoint_status().await {
            Ok(active) if active.role == "active" => Ok(active),
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

    /// Runs `attempt` against endpoints until one serves it (see the module
    /// documentation for the policy).
    async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(KvClient<InterceptedService<Channel, BearerToken>>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut attempts: u32 = 0;
        let mut backoff = BACKOFF_START;
        // Last error per peer index (peers may be added along the way).
        let mut last_errors: Vec<Option<String>> = Vec::new();
        {
            // Retrying cannot fix the configuration: fail at once.
            let state = self.lock();
            if state.peers.is_empty() {
                return Err(ClientError::NoEndpoints);
            }
            if state.peers.iter().all(|p| p.channel.is_err())
                && let Some(e) = state.peers.iter().find_map(Peer::bad_address)
            {
                return Err(e);
            }
        }
        // Endpoints that did not answer within the timeout (a paused or
        // partitioned master), and until when they are left out of the
        // rounds: waiting on them again at once would cost a whole timeout
        // while the other endpoint may be taking over right now.
        let mut silent_until: Vec<Option<Instant>> = Vec::new();
        loop {
            // One round: every endpoint at most once, starting with the one
            // believed active and jumping to hinted leaders first; endpoints
            // recently silent are skipped.
            let peers = self.lock().peers.len();
            let now = Instant::now();
            let mut tried: Vec<bool> = (0..peers)
                .map(|i| {
                    silent_until
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|t| now < t)
                })
                .collect();
            let active = self.lock().active;
            let mut next = if tried.get(active).copied().unwrap_or(false) {
                next_untried(&mut tried, active, peers)
            } else {
                Some(active)
            };
            while let Some(index) = next {
                let (address, channel) = {
                    let state = self.lock();
                    match state.peers.get(index) {
                        Some(p) => (p.address.clone(), p.channel.clone()),
                        None => break,
                    }
                };
                if tried.len() <= index {
                    tried.resize(index + 1, false);
                }
                tried[index] = true;
                let channel = match channel {
                    Ok(channel) => channel,
                    Err(reason) => {
                        record(&mut last_errors, index, format!("bad address: {reason}"));
                        next = next_untried(&mut tried, index, self.lock().peers.len());
                        continue;
                    }
                };
                attempts = attempts.saturating_add(1);

                let outcome = tokio::time::timeout(
                    self.timeout,
                    attempt(
                        KvClient::with_interceptor(channel, self.security.token.clone())
                            .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES),
                        self.timeout,
                    ),
                )
                .await;
                let silent = || {
                    let mut until = silent_until.clone();
                    if until.len() <= index {
                        until.resize(index + 1, None);
                    }
                    until[index] = Some(Instant::now() + self.timeout);
                    until
                };
                let failure = match outcome {
                    Ok(Ok(response)) => {
                        self.lock().active = index;
                        return Ok(response.into_inner());
                    }
                    // tonic enforces the request's `grpc-timeout` itself and
                    // may win the race against the outer timeout: both mean
                    // the same thing and are reported the same way.
                    Ok(Err(status)) if is_timeout(&status) => {
                        silent_until = silent();
                        Failure::Retry(self.no_answer())
                    }
                    Ok(Err(status)) => classify(&address, status),
                    Err(_elapsed) => {
                        silent_until = silent();
                        Failure::Retry(self.no_answer())
                    }
                };
                let error = match failure {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Retry(error) => {
                        tracing::debug!(%address, %error, "endpoint failed, trying the next");
                        next = None;
                        error
                    }
                    Failure::NotLeader(leader) => {
                        tracing::debug!(%address, %leader, "not the leader, following the hint");
                        next = self.peer_for_hint(&leader);
                        if leader.is_empty() {
                            "not the active master (it does not know which is)".to_owned()
                        } else {
                            format!("not the active master (it names {leader})")
                        }
                    }
                };
                record(&mut last_errors, index, error);
                // A hint to an endpoint already tried this round is ignored:
                // it would loop. Otherwise continue round-robin after `index`.
                if next.is_some_and(|n| tried.get(n).copied().unwrap_or(false)) {
                    next = None;
                }
                if next.is_none() {
                    next = next_untried(&mut tried, index, self.lock().peers.len());
                }
            }

            let now = Instant::now();
            if now >= deadline {
                let state = self.lock();
                let last_errors = last_errors
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        Some(EndpointError {
                            address: state.peers.get(i)?.address.clone(),
                            error: e?,
                        })
                    })
                    .collect();
                return Err(ClientError::Unavailable {
                    attempts,
                    last_errors,
                });
            }
            // Full jitter (sleep uniformly in [0, backoff]) spreads out the
            // clients that all lost the master at the same moment.
            let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
            tokio::time::sleep(jittered.min(deadline - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn no_answer(&self) -> String {
        format!(
            "no answer within {}",
            humantime::format_duration(self.timeout)
        )
    }

    /// Index of the peer a `dsm-leader` hint names, adding it when new.
    /// `None` when the hint is empty or unusable.
    fn peer_for_hint(&self, leader: &str) -> Option<usize> {
        let leader = strip(leader.trim());
        if leader.is_empty() {
            return None;
        }
        let mut state = self.lock();
        if let Some(i) = state.peers.iter().position(|p| p.address == leader) {
            return Some(i);
        }
        if state.peers.len() >= MAX_ENDPOINTS {
            return None;
        }
        let peer = make_peer(leader, self.timeout, self.security.tls.as_ref());
        if let Err(reason) = &peer.channel {
            tracing::debug!(%leader, %reason, "ignoring unusable leader hint");
            return None;
        }
        state.peers.push(peer);
        Some(state.peers.len() - 1)
    }
}

/// Remembers `error` as the last one of peer `index`.
fn record(last_errors: &mut Vec<Option<String>>, index: usize, error: String) {
    if last_errors.len() <= index {
        last_errors.resize(index + 1, None);
    }
    last_errors[index] = Some(error);
}

/// The first peer after `index` (round-robin) not yet tried this round.
fn next_untried(tried: &mut Vec<bool>, index: usize, count: usize) -> Option<usize> {
    tried.resize(count, false);
    (1..count)
        .map(|step| (index + step) % count)
        .find(|&i| !tried[i])
}

impl Peer {
    fn bad_address(&self) -> Option<ClientError> {
        let reason = self.channel.as_ref().err()?;
        Some(ClientError::BadAddress {
            address: self.address.clone(),
            reason: reason.clone(),
        })
    }
}

/// Decides what a failed attempt means (see the module documentation).
fn classify(address: &str, status: Status) -> Failure {
    match status.code() {
        Code::FailedPrecondition
            if status
                .metadata()
                .contains_key(crate::wire::CURRENT_VERSION_METADATA) =>
        {
            let current = status
                .metadata()
                .get(crate::wire::CURRENT_VERSION_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Failure::Fatal(ClientError::ConditionFailed { current })
        }
        Code::FailedPrecondition => match status.metadata().get(LEADER_METADATA) {
            Some(leader) => Failure::NotLeader(leader.to_str().unwrap_or_default().to_owned()),
            // Without the hint this is not "I am a standby" but a real
            // precondition failure: retrying elsewhere would not help.
            None => Failure::Fatal(ClientError::Other {
                address: address.to_owned(),
                status,
            }),
        },
        // CANCELLED is what tonic reports for its own transport timeouts and
        // for connections torn down mid-call (e.g. the master was killed);
        // UNKNOWN for a connection reset under a call in flight ("transport
        // error"). DSM servers never answer UNKNOWN themselves.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Failure::Retry(format!(
                "{}: {}",
                code_name(status.code()),
                describe(&status)
            ))
        }
        Code::InvalidArgument => {
            Failure::Fatal(ClientError::InvalidArgument(status.message().to_owned()))
        }
        Code::OutOfRange => {
            let complete_from = status
                .metadata()
                .get(crate::wire::COMPACTED_BELOW_METADATA)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            Failure::Fatal(ClientError::Compacted { complete_from })
        }
        Code::NotFound => Failure::Fatal(ClientError::NotFound(status.message().to_owned())),
        _ => Failure::Fatal(ClientError::Other {
            address: address.to_owned(),
            status,
        }),
    }
}

/// True when tonic's client-side timeout produced `status`.
fn is_timeout(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The status message followed by its error sources, so "tcp connect error"
/// becomes "tcp connect error: Connection refused (os error 111)".
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let part = err.to_string();
        // hyper's "transport error" layer adds words but no information.
        if part != "transport error" && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

/// Drops an `http://` scheme so addresses compare and print the same way
/// whether given as `host:port` or as a URI.
fn strip(address: &str) -> &str {
    address.strip_prefix("http://").unwrap_or(address)
}

fn make_peer(address: &str, timeout: Duration, tls: Option<&ClientTls>) -> Peer {
    let address = strip(address);
    let channel = if address.contains("://") {
        Err("only plain host:port addresses are supported".to_owned())
    } else {
        security::endpoint(address, tls).map(|e| e.connect_timeout(timeout).connect_lazy())
    };
    Peer {
        address: address.to_owned(),
        channel,
    }
}

/// Wraps a message in a request carrying a `grpc-timeout`, so the server can
/// give up on work whose caller has already moved on.
fn with_timeout<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[cfg(test)]
mod tests {
    //! Failover against fake `Kv` servers on 127.0.0.1:0. Each test asserts
    //! which server ended up serving (by the answer it gives and the calls it
    //! counted), never how long it took; every test is bounded by a short
    //! `retry_for` and a per-test timeout.

    use super::*;
    use crate::proto::kv_server::{Kv, KvServer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tonic::{Request, Response};

    /// A master killed under a call in flight shows up as UNKNOWN
    /// ("transport error: connection reset"): the client must try the
    /// other master, not give up (found by the failover measurement).
    #[test]
    fn connection_reset_mid_call_is_retried() {
        let reset = Status::unknown("transport error: connection error: connection reset");
        assert!(matches!(classify("127.0.0.1:1", reset), Failure::Retry(_)));
        let refused = Status::invalid_argument("key is empty");
        assert!(matches!(
            classify("127.0.0.1:1", refused),
            Failure::Fatal(_)
        ));
    }

    /// What a fake master does with every call.
    #[derive(Clone)]
    enum Behaviour {
        /// Serves: READ returns `value` (or NOT_FOUND when `None`), WRITE
        /// returns version `(epoch, 1)`.
        Active {
            epoch: u64,
            value: Option<&'static [u8]>,
        },
        /// A standby naming `leader` in `dsm-leader`.
        Standby { leader: String },
        /// Never answers (a paused master).
        Hang,
        /// Rejects the input.
        Invalid,
        /// A standby naming `leader` for its first `after` calls, then the
        /// active master of epoch 9 (a takeover completing).
        BecomesActive { leader: String, after: u32 },
    }

    struct Fake {
        behaviour: Behaviour,
        calls: Arc<AtomicU32>,
    }

    impl Fake {
        fn answer<T>(&self, ok: impl FnOnce(u64) -> T) -> Result<Response<T>, Status> {
            let calls = self.calls.fetch_add(1, Ordering::SeqCst);
            match &self.behaviour {
                Behaviour::Active { epoch, .. } => Ok(Response::new(ok(*epoch))),
                Behaviour::BecomesActive { after, .. } if calls >= *after => {
                    Ok(Response::new(ok(9)))
                }
                Behaviour::BecomesActive { leader, .. } => {
                    let mut status = Status::failed_precondition("not the active master");
                    if let Ok(value) = leader.parse() {
                        status.metadata_mut().insert(LEADER_METADATA, value);
                    }
                    Err(status)
                }
                Behaviour::Standby { leader } => {
                    let mut status = Status::failed_precondition("not the active master");
                    if let Ok(value) = leader.parse() {
                        status.metadata_mut().insert(LEADER_METADATA, value);
                    }
                    Err(status)
                }
                Behaviour::Hang => unreachable!("handled before answering"),
                Behaviour::Invalid => Err(Status::invalid_argument(
                    "key is 2048 bytes, over the 1024-byte limit",
                )),
            }
        }

        async fn maybe_hang(&self) {
            if matches!(self.behaviour, Behaviour::Hang) {
                self.calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        }
    }

    #[tonic::async_trait]
    impl Kv for Fake {
        async fn read(
            &self,
            _: Request<proto::ReadRequest>,
        ) -> Result<Response<proto::ReadReply>, Status> {
            self.maybe_hang().await;
            if let Behaviour::Active { value: None, .. } = self.behaviour {
                self.calls.fetch_add(1, Ordering::SeqCst);
                return Err(Status::not_found("key not found"));
            }
            let value = match self.behaviour {
                Behaviour::Active { value, .. } => value.unwrap_or_default().to_vec(),
                _ => Vec::new(),
            };
            self.answer(|epoch| proto::ReadReply {
                value,
                version: Some(proto::Version { epoch, seq: 1 }),
            })
        }

        async fn write(
            &self,
            _: Request<proto::WriteRequest>,
        ) -> Result<Response<proto::WriteReply>, Status> {
            self.maybe_hang().await;
            self.answer(|epoch| proto::WriteReply {
                version: Some(proto::Version { epoch, seq: 1 }),
                deduplicated: false,
            })
        }

        async fn status(
            &self,
            _: Request<proto::StatusRequest>,
        ) -> Result<Response<proto::StatusReply>, Status> {
            self.maybe_hang().await;
            self.answer(|epoch| proto::StatusReply {
                role: "active".into(),
                epoch,
                ..Default::default()
            })
        }

        async fn compact(
            &self,
            _: Request<proto::CompactRequest>,
        ) -> Result<Response<proto::CompactReply>, Status> {
            self.maybe_hang().await;
            self.answer(|_| proto::CompactReply::default())
        }

        async fn drain(
            &self,
            _: Request<proto::DrainRequest>,
        ) -> Result<Response<proto::DrainReply>, Status> {
            self.maybe_hang().await;
            self.answer(|_| proto::DrainReply::default())
        }

        async fn delete(
            &self,
            _: Request<proto::DeleteRequest>,
        ) -> Result<Response<proto::DeleteReply>, Status> {
            self.maybe_hang().await;
            self.answer(|epoch| proto::DeleteReply {
                version: Some(proto::Version { epoch, seq: 1 }),
                deduplicated: false,
            })
        }

        async fn list(
            &self,
            _: Request<proto::ListRequest>,
        ) -> Result<Response<proto::ListReply>, Status> {
            self.maybe_hang().await;
            self.answer(|_| proto::ListReply::default())
        }

        type WatchStream = tokio_stream::Empty<Result<proto::WatchBatch, Status>>;

        async fn watch(
            &self,
            _: Request<proto::WatchRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented(
                "the failover fakes serve unary calls only",
            ))
        }

        type SnapshotStream = tokio_stream::Empty<Result<proto::SnapshotChunk, Status>>;

        async fn snapshot(
            &self,
            _: Request<proto::SnapshotRequest>,
        ) -> Result<Response<Self::SnapshotStream>, Status> {
            Err(Status::unimplemented(
                "the failover fakes serve unary calls only",
            ))
        }

        type PipelineStream = tokio_stream::Empty<Result<proto::KvResults, Status>>;

        async fn pipeline(
            &self,
            _: Request<tonic::Streaming<proto::KvBatch>>,
        ) -> Result<Response<Self::PipelineStream>, Status> {
            Err(Status::unimplemented(
                "the failover fakes serve unary calls only",
            ))
        }
    }

    /// A running fake; the server stops when this is dropped.
    pub(crate) struct FakeServer {
        pub(crate) address: String,
        calls: Arc<AtomicU32>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl FakeServer {
        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// Binds 127.0.0.1:0 first so the address is known before serving.
    async fn bind() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local addr").to_string();
        (listener, address)
    }

    async fn serve(listener: tokio::net::TcpListener, behaviour: Behaviour) -> FakeServer {
        let address = listener.local_addr().expect("local addr").to_string();
        let calls = Arc::new(AtomicU32::new(0));
        let fake = Fake {
            behaviour,
            calls: calls.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(fake))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        FakeServer {
            address,
            calls,
            _stop: stop,
        }
    }

    pub(crate) async fn active(epoch: u64, value: Option<&'static [u8]>) -> FakeServer {
        let (listener, _) = bind().await;
        serve(listener, Behaviour::Active { epoch, value }).await
    }

    async fn fake(behaviour: Behaviour) -> FakeServer {
        let (listener, _) = bind().await;
        serve(listener, behaviour).await
    }

    /// An address nothing listens on: bound, then closed.
    async fn closed_port() -> String {
        let (listener, address) = bind().await;
        drop(listener);
        address
    }

    /// A client whose timeout is long enough that a healthy fake never
    /// misses it, even on a loaded CI machine.
    pub(crate) fn client(endpoints: &[&str]) -> Client {
        client_with_timeout(endpoints, Duration::from_secs(5))
    }

    /// For tests where a fake hangs: a short timeout only makes them finish
    /// sooner; what they assert does not depend on its length.
    fn client_with_timeout(endpoints: &[&str], timeout: Duration) -> Client {
        Client::try_new(ClientConfig {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            timeout,
            retry_for: Duration::from_secs(20),
        })
        .expect("valid config")
    }

    /// Bounds every test even if the client loops by mistake.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("test did not finish within 60 s")
    }

    #[tokio::test]
    async fn follows_leader_hint_to_an_unknown_address() {
        let leader = active(7, Some(b"v")).await;
        let standby = fake(Behaviour::Standby {
            leader: leader.address.clone(),
        })
        .await;
        let client = client(&[&standby.address]);

        let got = bounded(client.read(b"k")).await.expect("read");
        assert_eq!(got, Some((Bytes::from_static(b"v"), Version::new(7, 1))));
        assert_eq!(client.active_endpoint(), leader.address);
        assert_eq!(
            client.endpoints(),
            vec![standby.address.clone(), leader.address.clone()]
        );

        // The client remembers the leader: the standby is not asked again.
        let before = standby.calls();
        bounded(client.write(b"k", b"v2")).await.expect("write");
        assert_eq!(standby.calls(), before);
        assert_eq!(leader.calls(), 2);
    }

    #[tokio::test]
    async fn follows_leader_hint_to_the_backup() {
        let leader = active(2, None).await;
        let standby = fake(Behaviour::Standby {
            leader: format!("http://{}", leader.address),
        })
        .await;
        let client = client(&[&standby.address, &leader.address]);
        let version = bounded(client.write(b"k", b"v")).await.expect("write");
        assert_eq!(version, Version::new(2, 1));
        assert_eq!(client.endpoints().len(), 2, "hint matched the known backup");
        assert_eq!(client.active_endpoint(), leader.address);
    }

    #[tokio::test]
    async fn skips_a_closed_port() {
        let dead = closed_port().await;
        let backup = active(3, Some(b"x")).await;
        let client = client(&[&dead, &backup.address]);
        let status = bounded(client.status()).await.expect("status");
        assert_eq!(status.epoch, 3);
        assert_eq!(client.active_endpoint(), backup.address);
    }

    #[tokio::test]
    async fn skips_a_master_that_hangs_past_the_timeout() {
        let paused = fake(Behaviour::Hang).await;
        let backup = active(4, Some(b"y")).await;
        let client = client_with_timeout(
            &[&paused.address, &backup.address],
            Duration::from_millis(300),
        );
        let got = bounded(client.read(b"k")).await.expect("read");
        assert_eq!(got, Some((Bytes::from_static(b"y"), Version::new(4, 1))));
        assert!(paused.calls() >= 1, "the paused master was tried first");
        assert_eq!(client.active_endpoint(), backup.address);
    }

    /// A paused master that timed out is not waited on again while the
    /// standby takes over: the client keeps asking the standby (which names
    /// the paused master until it has taken over) and is served by it.
    #[tokio::test]
    async fn a_master_that_timed_out_is_not_waited_on_again_during_the_takeover() {
        let paused = fake(Behaviour::Hang).await;
        let standby = fake(Behaviour::BecomesActive {
            leader: paused.address.clone(),
            after: 3,
        })
        .await;
        let client = client_with_timeout(
            &[&paused.address, &standby.address],
            Duration::from_millis(500),
        );
        let version = bounded(client.write(b"k", b"v")).await.expect("write");
        assert_eq!(version, Version::new(9, 1));
        assert_eq!(paused.calls(), 1, "the paused master was waited on once");
        assert_eq!(client.active_endpoint(), standby.address);
    }

    #[tokio::test]
    async fn not_found_is_none_without_retrying() {
        let master = active(1, None).await;
        let backup = active(1, Some(b"other")).await;
        let client = client(&[&master.address, &backup.address]);
        assert_eq!(bounded(client.read(b"k")).await.expect("read"), None);
        assert_eq!(backup.calls(), 0);
    }

    #[tokio::test]
    async fn invalid_argument_is_returned_at_once() {
        let master = fake(Behaviour::Invalid).await;
        let backup = active(1, None).await;
        let client = client(&[&master.address, &backup.address]);
        let err = bounded(client.write(b"k", b"v")).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidArgument(m) if m.contains("1024-byte limit")),
            "{err}"
        );
        assert_eq!(master.calls(), 1);
        assert_eq!(backup.calls(), 0);
    }

    #[tokio::test]
    async fn gives_up_naming_every_endpoint() {
        let dead = closed_port().await;
        let paused = fake(Behaviour::Hang).await;
        let mut client = client_with_timeout(&[&dead, &paused.address], Duration::from_millis(300));
        client.retry_for = Duration::from_millis(500);
        let err = bounded(client.read(b"k")).await.unwrap_err();
        let ClientError::Unavailable {
            attempts,
            last_errors,
        } = &err
        else {
            panic!("expected Unavailable, got {err}");
        };
        assert!(*attempts >= 2);
        let addresses: Vec<&str> = last_errors.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, vec![dead.as_str(), paused.address.as_str()]);
        assert!(last_errors[0].error.starts_with("UNAVAILABLE"), "{err}");
        assert!(
            last_errors[1].error.starts_with("no answer within"),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains(&dead) && message.contains(&paused.address));
    }

    #[tokio::test]
    async fn standbys_pointing_at_each_other_do_not_loop_forever() {
        let (listener_a, a) = bind().await;
        let (listener_b, b) = bind().await;
        let standby_a = serve(listener_a, Behaviour::Standby { leader: b.clone() }).await;
        let standby_b = serve(listener_b, Behaviour::Standby { leader: a.clone() }).await;
        let mut client = client(&[&a]);
        client.retry_for = Duration::from_millis(300);
        let err = bounded(client.status()).await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains(&format!("it names {b}")), "{err}");
        assert!(standby_a.calls() >= 1 && standby_b.calls() >= 1);
    }

    #[tokio::test]
    async fn failed_precondition_without_hint_is_not_retried() {
        let (listener, _) = bind().await;
        // A standby with an unusable (non-ASCII) hint sends no metadata.
        let odd = serve(
            listener,
            Behaviour::Standby {
                leader: "\u{7f}bad\n".into(),
            },
        )
        .await;
        let client = client(&[&odd.address]);
        let err = bounded(client.compact()).await.unwrap_err();
        assert!(matches!(err, ClientError::Other { .. }), "{err}");
        assert!(err.to_string().contains("FAILED_PRECONDITION"), "{err}");
        assert_eq!(odd.calls(), 1);
    }

    #[tokio::test]
    async fn config_errors_are_typed() {
        let config = |endpoints: &[&str]| {
            ClientConfig::new(endpoints.iter().map(|s| s.to_string()).collect())
        };
        assert!(matches!(
            Client::try_new(config(&[" ", ""])),
            Err(ClientError::NoEndpoints)
        ));
        assert!(matches!(
            Client::try_new(config(&["https://x:1"])),
            Err(ClientError::BadAddress { .. })
        ));
        assert!(matches!(
            Client::try_new(config(&["127.0.0.1:1", "bad host:1"])),
            Err(ClientError::BadAddress { .. })
        ));
        // `new` accepts them; calls fail at once, without retrying.
        let err = Client::new(config(&["bad host:1"]))
            .status()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::BadAddress { address, .. } if address == "bad host:1"),
            "{err}"
        );
        let err = Client::new(config(&[])).status().await.unwrap_err();
        assert!(matches!(err, ClientError::NoEndpoints), "{err}");
    }

    #[tokio::test]
    async fn a_bad_backup_address_does_not_stop_the_master() {
        let master = active(1, Some(b"v")).await;
        let client = Client::new(ClientConfig::new(vec![
            "bad host:1".into(),
            master.address.clone(),
        ]));
        assert!(bounded(client.read(b"k")).await.expect("read").is_some());
    }
}
