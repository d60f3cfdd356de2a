//! Registration against scriptable fake masters on 127.0.0.1:0: leader
//! hints, heartbeats, failover to the other master, silent and deposed
//! masters, and the addresses dialled.

use super::*;
use crate::proto::control_server::{Control, ControlServer};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status, Streaming};

const LIMIT: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(50);

/// A scriptable `Control` server.
struct FakeMaster {
    /// Accept registrations (else answer FAILED_PRECONDITION).
    active: AtomicBool,
    /// Leader hint given while not active.
    leader: std::sync::Mutex<String>,
    /// Epoch answered.
    epoch: AtomicU64,
    /// Answer Pings with Pongs.
    pong: bool,
    registrations: AtomicU64,
    pings: AtomicU64,
    /// Ends every heartbeat stream when set (the master "dies").
    stop: watch::Receiver<bool>,
}

type PongStream = Pin<Box<dyn Stream<Item = Result<proto::Pong, Status>> + Send>>;

/// The `Control` service of a shared [`FakeMaster`] (the trait comes from the wire
/// crate, so it is implemented on a type of this one).
struct FakeControl(Arc<FakeMaster>);

#[tonic::async_trait]
impl Control for FakeControl {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterReply>, Status> {
        assert_eq!(request.get_ref().slave_id, "s1");
        assert_eq!(request.get_ref().address, "127.0.0.1:9");
        if !self.0.active.load(Ordering::SeqCst) {
            let mut status = Status::failed_precondition("not the active master");
            let leader = self.0.leader.lock().map(|l| l.clone()).unwrap_or_default();
            status
                .metadata_mut()
                .insert(metadata::LEADER, leader.parse().unwrap());
            return Err(status);
        }
        self.0.registrations.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(proto::RegisterReply {
            epoch: self.0.epoch.load(Ordering::SeqCst),
        }))
    }

    type HeartbeatStream = PongStream;

    async fn heartbeat(
        &self,
        request: Request<Streaming<proto::Ping>>,
    ) -> Result<Response<PongStream>, Status> {
        let mut pings = request.into_inner();
        let me = self.0.clone();
        let mut stop = self.0.stop.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                tokio::select! {
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                    ping = pings.next() => match ping {
                        Some(Ok(ping)) => {
                            me.pings.fetch_add(1, Ordering::SeqCst);
                            if me.pong {
                                let pong = proto::Pong { epoch: me.epoch.load(Ordering::SeqCst), seq: ping.seq };
                                if tx.send(Ok(pong)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        _ => return,
                    },
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn leave(
        &self,
        _: Request<proto::LeaveRequest>,
    ) -> Result<Response<proto::LeaveReply>, Status> {
        Ok(Response::new(proto::LeaveReply {}))
    }
}

/// A stream fed by a task running `body` with the sending half.
fn async_stream<F, Fut>(body: F) -> PongStream
where
    F: FnOnce(mpsc::Sender<Result<proto::Pong, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(ReceiverStream::new(rx))
}

struct Running {
    master: Arc<FakeMaster>,
    addr: String,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

async fn fake_master(active: bool, epoch: u64, pong: bool) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stop_rx) = watch::channel(false);
    let master = Arc::new(FakeMaster {
        active: AtomicBool::new(active),
        leader: std::sync::Mutex::new(String::new()),
        epoch: AtomicU64::new(epoch),
        pong,
        registrations: AtomicU64::new(0),
        pings: AtomicU64::new(0),
        stop: stop_rx.clone(),
    });
    let service = ControlServer::new(FakeControl(master.clone()));
    let mut shutdown = stop_rx;
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                },
            )
            .await;
    });
    Running {
        master,
        addr,
        stop,
        server,
    }
}

/// Waits until the slave reports being registered with `addr`.
async fn registered_with(state: &mut watch::Receiver<Option<String>>, addr: &str) {
    let want = uri(addr);
    state
        .wait_for(|s| s.as_deref() == Some(want.as_str()))
        .await
        .unwrap();
}

#[tokio::test]
async fn follows_leader_hint_heartbeats_and_fails_over() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "s1").unwrap();
        let a = fake_master(false, 2, true).await;
        let b = fake_master(true, 3, true).await;
        // A is a standby pointing at B (a bare host:port, as masters advertise).
        *a.master.leader.lock().unwrap() = b.addr.clone();

        let registration = Registration::new(
            "s1".into(),
            "127.0.0.1:9".into(),
            vec![a.addr.clone(), b.addr.clone()],
            INTERVAL,
            store.clone(),
        );
        let mut state = registration.subscribe();
        let (stop_slave, stop_slave_rx) = watch::channel(false);
        let task = tokio::spawn(registration.run(async move {
            let mut rx = stop_slave_rx;
            let _ = rx.wait_for(|s| *s).await;
        }));

        registered_with(&mut state, &b.addr).await;
        assert_eq!(b.master.registrations.load(Ordering::SeqCst), 1);
        assert_eq!(a.master.registrations.load(Ordering::SeqCst), 0);
        assert_eq!(store.epoch(), 3, "RegisterReply's epoch is recorded");
        // Heartbeats arrive.
        while b.master.pings.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(INTERVAL).await;
        }

        // B dies and A takes over (with a newer epoch).
        a.master.epoch.store(4, Ordering::SeqCst);
        a.master.active.store(true, Ordering::SeqCst);
        b.stop.send_replace(true);
        b.server.await.unwrap();
        state.wait_for(|s| s.is_none()).await.unwrap();
        registered_with(&mut state, &a.addr).await;
        assert_eq!(a.master.registrations.load(Ordering::SeqCst), 1);
        assert_eq!(store.epoch(), 4);
        while a.master.pings.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(INTERVAL).await;
        }

        stop_slave.send_replace(true);
        task.await.unwrap();
        assert_eq!(*state.borrow(), None, "not registered after shutdown");
        let _ = a.stop.send(true);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn silent_master_is_dropped() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "s1").unwrap();
        // Accepts registrations and pings but never answers them.
        let mute = fake_master(true, 1, false).await;
        let registration = Registration::new(
            "s1".into(),
            "127.0.0.1:9".into(),
            vec![mute.addr.clone()],
            INTERVAL,
            store,
        );
        let mut state = registration.subscribe();
        let task = tokio::spawn(registration.run(std::future::pending()));
        // Registered, dropped for silence, registered again.
        registered_with(&mut state, &mute.addr).await;
        state.wait_for(|s| s.is_none()).await.unwrap();
        registered_with(&mut state, &mute.addr).await;
        assert!(mute.master.registrations.load(Ordering::SeqCst) >= 2);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deposed_master_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "s1").unwrap();
        store.raise_epoch(5).await.unwrap();
        let old = fake_master(true, 4, true).await;
        let new = fake_master(true, 5, true).await;
        let registration = Registration::new(
            "s1".into(),
            "127.0.0.1:9".into(),
            vec![old.addr.clone(), new.addr.clone()],
            INTERVAL,
            store.clone(),
        );
        let mut state = registration.subscribe();
        let task = tokio::spawn(registration.run(std::future::pending()));
        registered_with(&mut state, &new.addr).await;
        assert_eq!(store.epoch(), 5);
        task.abort();
    })
    .await
    .unwrap();
}

#[test]
fn uri_adds_http_when_no_scheme() {
    assert_eq!(uri("10.0.0.1:7000"), "http://10.0.0.1:7000");
    assert_eq!(uri("https://m:1"), "https://m:1");
}
