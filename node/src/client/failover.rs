//! How a [`Client`] call finds an endpoint that serves it: the policy every
//! call of the client goes through.
//!
//! One round tries every known endpoint at most once, starting with the one
//! believed active. A standby's FAILED_PRECONDITION carrying `dsm-leader`
//! is followed to the master it names (learning its address when new); an
//! endpoint that is down, or silent past the per-attempt timeout, is left for
//! the next one, and one that was silent is skipped for a timeout's length so
//! that a paused master is not waited on again while the other takes over.
//! When a round ends without an answer the client backs off (exponential,
//! full jitter) and starts another, until the retry budget is spent; it then
//! reports the last error of every endpoint.
//!
//! Answers that are the caller's (INVALID_ARGUMENT, NOT_FOUND, a condition
//! that did not hold, …) are returned at once ([`classify`]): retrying them
//! elsewhere cannot help.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dsm_wire::metadata;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::error::describe_status;
use super::pipelined::KvPipeline;
use super::{Client, ClientError, EndpointError};
use crate::backoff;
use crate::error_chain;
use crate::limits::CLIENT_MAX_MESSAGE_BYTES;
use crate::pipeline::Pipe;
use crate::proto::kv_client::KvClient;
use crate::security::{self, BearerToken, ClientTls};

/// First backoff delay after a round in which every endpoint failed.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Backoff ceiling: long enough not to hammer a restarting master, short
/// enough that a failover is noticed within a second of completing.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Upper bound on endpoints learned from `dsm-leader` hints, so a confused
/// (or hostile) server cannot make the client grow its list forever.
const MAX_ENDPOINTS: usize = 16;

/// One master-capable process the client knows about.
#[derive(Debug)]
pub(super) struct Peer {
    /// Address as given or learned, without scheme (shown to people and
    /// compared with `dsm-leader` hints).
    pub(super) address: String,
    /// Created lazily: tonic connects on first use and reconnects after a
    /// failure, so one channel per endpoint is reused for every call.
    /// `Err` (with the reason) for an address that is not a valid URI: it is
    /// kept so every call's error can name it.
    pub(super) channel: Result<Channel, String>,
    /// The endpoint's `Kv.Pipeline` stream, opened by the first pipelined op
    /// (see [`super::pipelined`]).
    pub(super) pipe: Option<Arc<Pipe<KvPipeline>>>,
}

/// Mutable part of the client. A std `Mutex` because it is only held to copy
/// a channel or update an index, never across an `.await`.
#[derive(Debug)]
pub(super) struct State {
    /// Every endpoint known, configured ones first, then learned ones.
    pub(super) peers: Vec<Peer>,
    /// Index into `peers` of the endpoint believed active.
    pub(super) active: usize,
}

/// What to do after a failed attempt.
pub(super) enum Failure {
    /// A standby pointed at the active master (address, possibly empty).
    NotLeader(String),
    /// The endpoint is down, slow or unreachable: try another.
    Retry(String),
    /// The answer stands: give it to the caller.
    Fatal(ClientError),
}

impl Client {
    /// Runs the unary call `attempt` against endpoints until one serves it
    /// (see the module documentation for the policy).
    pub(super) async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(KvClient<InterceptedService<Channel, BearerToken>>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let unary = |_, channel, timeout| {
            let kv = KvClient::with_interceptor(channel, self.security.token.clone())
                .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES);
            let answer = attempt(kv, timeout);
            async move { answer.await.map(tonic::Response::into_inner) }
        };
        // A unary call's stream ends with it: nothing to forget.
        self.on_endpoints(unary, |_| {}).await
    }

    /// Runs `attempt` (given the endpoint's index in `peers` and its
    /// channel) against endpoints until one serves it: the policy of the
    /// module documentation, for unary calls and pipelined ops alike.
    /// `silent` is told the index of an endpoint that did not answer within
    /// the timeout.
    pub(super) async fn on_endpoints<T, F, Fut>(
        &self,
        attempt: F,
        silent: impl Fn(usize),
    ) -> Result<T, ClientError>
    where
        F: Fn(usize, Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut attempts: u32 = 0;
        // Rounds in which every endpoint failed, for the backoff.
        let mut round: u32 = 0;
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

                let outcome =
                    tokio::time::timeout(self.timeout, attempt(index, channel, self.timeout)).await;
                let silent = || {
                    silent(index);
                    let mut until = silent_until.clone();
                    if until.len() <= index {
                        until.resize(index + 1, None);
                    }
                    until[index] = Some(Instant::now() + self.timeout);
                    until
                };
                let failure = match outcome {
                    Ok(Ok(answer)) => {
                        self.lock().active = index;
                        return Ok(answer);
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
            // Full jitter spreads out the clients that all lost the master at
            // the same moment.
            let pause = backoff::full_jitter(BACKOFF_START, BACKOFF_MAX, round);
            tokio::time::sleep(pause.min(deadline - now)).await;
            round = round.saturating_add(1);
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
    /// The configuration error of a peer whose address is unusable.
    pub(super) fn bad_address(&self) -> Option<ClientError> {
        let reason = self.channel.as_ref().err()?;
        Some(ClientError::BadAddress {
            address: self.address.clone(),
            reason: reason.clone(),
        })
    }
}

/// Decides what a failed attempt means (see the module documentation).
pub(super) fn classify(address: &str, status: Status) -> Failure {
    match status.code() {
        Code::FailedPrecondition if status.metadata().contains_key(metadata::CURRENT_VERSION) => {
            let current = status
                .metadata()
                .get(metadata::CURRENT_VERSION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Failure::Fatal(ClientError::ConditionFailed { current })
        }
        Code::FailedPrecondition => match status.metadata().get(metadata::LEADER) {
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
            Failure::Retry(describe_status(&status))
        }
        Code::InvalidArgument => {
            Failure::Fatal(ClientError::InvalidArgument(status.message().to_owned()))
        }
        Code::OutOfRange => {
            let complete_from = status
                .metadata()
                .get(metadata::COMPACTED_BELOW)
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
    error_chain::causes(status).any(|cause| cause.is::<tonic::TimeoutExpired>())
}

/// Drops an `http://` scheme so addresses compare and print the same way
/// whether given as `host:port` or as a URI.
pub(super) fn strip(address: &str) -> &str {
    address.strip_prefix("http://").unwrap_or(address)
}

/// A peer for `address`, its channel created lazily (or the reason it
/// cannot be).
pub(super) fn make_peer(address: &str, timeout: Duration, tls: Option<&ClientTls>) -> Peer {
    let address = strip(address);
    let channel = if address.contains("://") {
        Err("only plain host:port addresses are supported".to_owned())
    } else {
        security::endpoint(address, tls).map(|e| e.connect_timeout(timeout).connect_lazy())
    };
    Peer {
        address: address.to_owned(),
        channel,
        pipe: None,
    }
}

/// Wraps a message in a request carrying a `grpc-timeout`, so the server can
/// give up on work whose caller has already moved on.
pub(super) fn with_timeout<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}
