//! Request pipelining over one long-lived bidirectional gRPC stream: the
//! master's Puts and Gets to each slave (`Replica.Pipeline`), and the bench's
//! READs and WRITEs to the master (`Kv.Pipeline`).
//!
//! Why: a unary call costs about 17 µs of CPU on each side, a message on an
//! open stream a fraction of that, and one message carries every op waiting
//! at that moment. Callers still see one request, one answer:
//! [`Pipe::call`] resolves to what a unary call would have returned, status
//! codes included.
//!
//! One driver task per pipe owns the stream. It opens it on the first op;
//! when the stream breaks it fails every op in flight with UNAVAILABLE and
//! opens a new stream on the next op; when the peer refuses to open it (a
//! standby naming the active master, a bad token) every op gets that refusal
//! as it is. An op whose caller stopped waiting is not sent. Each service describes its messages
//! through [`Protocol`], whose packing and unpacking `batch_and_results!`
//! writes for every service alike.

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use bytes::Bytes;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Ops sent in one stream message at most.
pub const MAX_BATCH: usize = 256;

/// How one pipelined service batches ops and reports results.
pub trait Protocol: Send + 'static {
    /// One request.
    type Op: Send + 'static;
    /// One successful answer.
    type Outcome: Send + 'static;
    /// A message carrying several ops.
    type Batch: Send + 'static;
    /// A message carrying several results.
    type Results: Send + 'static;

    /// Packs ops, each with the id its result will carry.
    fn batch(ops: Vec<(u64, Self::Op)>) -> Self::Batch;

    /// Unpacks results: each op's id with its answer or the status a unary
    /// call would have failed with.
    fn results(results: Self::Results) -> Vec<(u64, Result<Self::Outcome, Status>)>;

    /// Opens the stream, sending `batches` as they come.
    fn open(
        &mut self,
        batches: ReceiverStream<Self::Batch>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Results>, Status>> + Send;
}

/// Writes [`Protocol::batch`] and [`Protocol::results`] inside an
/// `impl Protocol`, for a service whose messages have the shape every
/// pipeline of `dsm.proto` has:
///
/// ```text
/// message XBatch   { repeated XOp ops = 1; }          XOp     { uint64 id; oneof op { … } }
/// message XResults { repeated XResult results = 1; }  XResult { uint64 id; oneof result { …, OpError error } }
/// ```
///
/// prost generates distinct types for each service and generics cannot name
/// their fields, so the two functions are written out here once and each
/// impl only names its messages: `batch` and `op` the message types,
/// `error` the `OpError` case of its result, `peer` who answers (named in
/// the error for a result without a case, which only a bug can send).
macro_rules! batch_and_results {
    (batch: $batch:ident, op: $op:ident, error: $error:path, peer: $peer:literal) => {
        fn batch(ops: Vec<(u64, Self::Op)>) -> $batch {
            $batch {
                ops: ops
                    .into_iter()
                    .map(|(id, op)| $op { id, op: Some(op) })
                    .collect(),
            }
        }

        fn results(results: Self::Results) -> Vec<(u64, Result<Self::Outcome, ::tonic::Status>)> {
            results
                .results
                .into_iter()
                .map(|r| {
                    let outcome = match r.result {
                        Some($error(e)) => Err(e.into()),
                        Some(outcome) => Ok(outcome),
                        None => Err(::tonic::Status::internal(concat!(
                            $peer,
                            " sent an empty pipelined result"
                        ))),
                    };
                    (r.id, outcome)
                })
                .collect()
        }
    };
}
pub(crate) use batch_and_results;

type Reply<P> = oneshot::Sender<Result<<P as Protocol>::Outcome, Status>>;

/// An op waiting to be sent, and where its answer goes.
struct Pending<P: Protocol> {
    op: P::Op,
    reply: Reply<P>,
}

/// Handle on one pipelined stream. Dropping it ends the driver task.
pub struct Pipe<P: Protocol> {
    ops: mpsc::UnboundedSender<Pending<P>>,
}

impl<P: Protocol> std::fmt::Debug for Pipe<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe").finish_non_exhaustive()
    }
}

impl<P: Protocol> Pipe<P> {
    /// Starts the driver task for `protocol` (which holds the client).
    pub fn new(protocol: P) -> Pipe<P> {
        let (ops, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(protocol, rx));
        Pipe { ops }
    }

    /// Sends `op` and waits for its answer.
    pub async fn call(&self, op: P::Op) -> Result<P::Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Pending { op, reply })
            .map_err(|_| Status::unavailable("pipeline closed"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("pipeline closed before answering"))?
    }
}

/// Ops sent and not answered yet, by id.
struct InFlight<P: Protocol> {
    next_id: u64,
    waiting: HashMap<u64, Reply<P>>,
}

impl<P: Protocol> InFlight<P> {
    /// Takes `first` and every op already queued behind it (up to
    /// [`MAX_BATCH`]) into one batch.
    fn batch(
        &mut self,
        first: Pending<P>,
        queued: &mut mpsc::UnboundedReceiver<Pending<P>>,
    ) -> P::Batch {
        let mut ops = Vec::new();
        let mut next = Some(first);
        while let Some(pending) = next {
            // A caller that gave up (timed out, moved to another peer) is not
            // sent: its op would only reach the peer late.
            if !pending.reply.is_closed() {
                self.next_id += 1;
                self.waiting.insert(self.next_id, pending.reply);
                ops.push((self.next_id, pending.op));
            }
            next = if ops.len() < MAX_BATCH {
                queued.try_recv().ok()
            } else {
                None
            };
        }
        P::batch(ops)
    }

    fn answer(&mut self, results: P::Results) {
        for (id, outcome) in P::results(results) {
            if let Some(reply) = self.waiting.remove(&id) {
                let _ = reply.send(outcome);
            }
        }
    }

    fn refuse_all(&mut self, status: &Status) {
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(status.clone()));
        }
    }

    fn fail_all(&mut self, why: &Status) {
        let status = Status::unavailable(format!("pipeline stream broke: {}", why.message()));
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(status.clone()));
        }
    }
}

/// Owns the stream: batches outgoing ops, matches results to callers.
async fn drive<P: Protocol>(mut protocol: P, mut queued: mpsc::UnboundedReceiver<Pending<P>>) {
    let mut in_flight = InFlight::<P> {
        next_id: 0,
        waiting: HashMap::new(),
    };
    // No stream is open here; None means the pipe was dropped.
    while let Some(first) = queued.recv().await {
        let (batches, outgoing) = mpsc::channel(64);
        // The first batch goes out with the call, so the server has work as
        // soon as the stream opens.
        let _ = batches.try_send(in_flight.batch(first, &mut queued));
        let mut results = match protocol.open(ReceiverStream::new(outgoing)).await {
            Ok(results) => results,
            // The peer refused the stream (a standby naming the active master,
            // a fenced slave, a bad token): every op gets that answer as is.
            Err(status) => {
                in_flight.refuse_all(&status);
                continue;
            }
        };
        let broken = loop {
            tokio::select! {
                op = queued.recv() => {
                    let Some(op) = op else { return };
                    let batch = in_flight.batch(op, &mut queued);
                    if batches.send(batch).await.is_err() {
                        break Status::unavailable("stream closed");
                    }
                }
                message = results.message() => match message {
                    Ok(Some(message)) => in_flight.answer(message),
                    Ok(None) => break Status::unavailable("the server closed the stream"),
                    Err(status) => break status,
                },
            }
        };
        in_flight.fail_all(&broken);
    }
}

/// Results sent back per message at most by [`serve`].
const MAX_RESULTS: usize = 256;

/// Ops one [`serve`]d stream may have running or queued at once; past it the
/// stream is not read until some finish (backpressure: one client cannot
/// flood the server).
pub const MAX_PENDING_PER_STREAM: usize = 4096;

/// The server side of a pipeline: runs the ops of every incoming batch with
/// `run` and streams the results back, batched as they complete.
///
/// - Ops on the same key (`key_of`) run one after the other in the order they
///   were sent, so that a stream's WRITE and a later READ of the same key
///   behave as if sent one by one; ops on different keys, and ops without a
///   key (`key_of` returning `None`), run concurrently (so, for example, a
///   slave's Puts meet in one group commit).
/// - At most [`MAX_PENDING_PER_STREAM`] ops are taken off the stream at a time.
/// - When `stop` fires (the server is shutting down) no further batch is
///   read; the ops already taken finish and are answered, then the stream
///   ends, so the connection can close gracefully.
///
/// The returned stream also ends once the client closed its side and every op
/// finished.
pub fn serve<Batch, Op, Done, Results, Run, Fut>(
    mut batches: tonic::Streaming<Batch>,
    ops: fn(Batch) -> Vec<Op>,
    key_of: fn(&Op) -> Option<Bytes>,
    run: Run,
    pack: fn(Vec<Done>) -> Results,
    stop: CancellationToken,
) -> ReceiverStream<Result<Results, Status>>
where
    Batch: Send + 'static,
    Op: Send + 'static,
    Done: Send + 'static,
    Results: Send + 'static,
    Run: Fn(Op) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Done> + Send + 'static,
{
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Option<Bytes>>();
    tokio::spawn(async move {
        // Ops waiting behind a running op of the same key, by key.
        let mut queues: HashMap<Bytes, VecDeque<Op>> = HashMap::new();
        let mut pending = 0usize;
        let mut input_open = true;
        let launch = |op: Op, key: Option<Bytes>| {
            let done = done_tx.clone();
            let finished = finished_tx.clone();
            // Boxed before it is spawned: an op's future is several KB, and
            // tokio moves a task's future a few times between spawn and
            // completion; a callgrind profile found 70 % of the pipelined
            // master's instructions in those copies (docs/BENCHMARKS.md).
            let work = Box::pin(run(op));
            tokio::spawn(async move {
                let _ = done.send(work.await);
                let _ = finished.send(key);
            });
        };
        while input_open || pending > 0 {
            tokio::select! {
                () = stop.cancelled(), if input_open => input_open = false,
                batch = batches.message(), if input_open && pending < MAX_PENDING_PER_STREAM => {
                    let Ok(Some(batch)) = batch else {
                        input_open = false;
                        continue;
                    };
                    for op in ops(batch) {
                        pending += 1;
                        match key_of(&op) {
                            Some(key) => match queues.get_mut(&key) {
                                Some(queue) => queue.push_back(op),
                                None => {
                                    queues.insert(key.clone(), VecDeque::new());
                                    launch(op, Some(key));
                                }
                            },
                            None => launch(op, None),
                        }
                    }
                }
                finished = finished_rx.recv() => {
                    let Some(key) = finished else { break };
                    pending -= 1;
                    let Some(key) = key else { continue };
                    let next = queues.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(op) => launch(op, Some(key)),
                        None => {
                            queues.remove(&key);
                        }
                    }
                }
            }
        }
    });
    let (out_tx, out_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(first) = done_rx.recv().await {
            let mut results = vec![first];
            while results.len() < MAX_RESULTS {
                match done_rx.try_recv() {
                    Ok(result) => results.push(result),
                    Err(_) => break,
                }
            }
            if out_tx.send(Ok(pack(results))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(out_rx)
}
