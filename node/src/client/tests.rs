//! Failover against fake `Kv` servers on 127.0.0.1:0. Each test asserts
//! which server ended up serving (by the answer it gives and the calls it
//! counted), never how long it took; every test is bounded by a short
//! `retry_for` and a per-test timeout.

use super::failover::{Failure, classify};
use super::*;
use crate::proto::kv_server::{Kv, KvServer};
use dsm_wire::metadata;
use std::future::Future;
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
            Behaviour::BecomesActive { after, .. } if calls >= *after => Ok(Response::new(ok(9))),
            Behaviour::BecomesActive { leader, .. } => {
                let mut status = Status::failed_precondition("not the active master");
                if let Ok(value) = leader.parse() {
                    status.metadata_mut().insert(metadata::LEADER, value);
                }
                Err(status)
            }
            Behaviour::Standby { leader } => {
                let mut status = Status::failed_precondition("not the active master");
                if let Ok(value) = leader.parse() {
                    status.metadata_mut().insert(metadata::LEADER, value);
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
    let config =
        |endpoints: &[&str]| ClientConfig::new(endpoints.iter().map(|s| s.to_string()).collect());
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
