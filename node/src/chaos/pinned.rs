//! The pinned clients: during every long pause of the active master, once
//! its successor serves, the nemesis WRITEs fresh keys through the successor
//! and then sends the *paused* master READs of those keys (and of the hot
//! keys) and WRITEs, on connections it had open before the pause: raw gRPC,
//! one attempt, no leader hint followed, so that what the paused master
//! answers when it wakes is what the history records.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dsm_wire::Role;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use super::history::{Call, Completion, Recorder};
use super::workload::{Workload, write};
use crate::client::Client;
use crate::proto::kv_client::KvClient;
use crate::proto::{ReadRequest, StatusRequest, WriteRequest};
use crate::version::Version;

/// Timeout of the pinned clients: longer than any pause, so that what a
/// paused master answers when it wakes is what they see.
pub(super) const PINNED_TIMEOUT: Duration = Duration::from_secs(15);

/// A raw `Kv` client of one master: one attempt per call, no failover, no
/// leader hint followed, so its answers are that master's own.
#[derive(Clone)]
pub(super) struct PinnedClient {
    kv: KvClient<Channel>,
}

impl PinnedClient {
    pub(super) fn new(address: &str) -> anyhow::Result<PinnedClient> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .context("pinned client address")?
            .connect_timeout(Duration::from_secs(2));
        Ok(PinnedClient {
            kv: KvClient::new(endpoint.connect_lazy()),
        })
    }

    async fn read(&self, key: &str) -> Completion {
        let mut request = tonic::Request::new(ReadRequest {
            key: key.as_bytes().to_vec(),
        });
        request.set_timeout(PINNED_TIMEOUT);
        match self.kv.clone().read(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                Completion::Read {
                    found: Some((
                        String::from_utf8_lossy(&reply.value).into_owned(),
                        reply.version.map(Version::from).unwrap_or_default(),
                    )),
                }
            }
            Err(status) => pinned_outcome(status, true),
        }
    }

    async fn write(&self, key: &str, value: &str) -> Completion {
        let mut request = tonic::Request::new(WriteRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..WriteRequest::default()
        });
        request.set_timeout(PINNED_TIMEOUT);
        match self.kv.clone().write(request).await {
            Ok(reply) => Completion::Written {
                version: reply
                    .into_inner()
                    .version
                    .map(Version::from)
                    .unwrap_or_default(),
            },
            Err(status) => pinned_outcome(status, false),
        }
    }

    async fn status(&self) {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(PINNED_TIMEOUT);
        let _ = self.kv.clone().status(request).await;
    }
}

/// What a pinned call's error means for the history: NOT_FOUND is an answer,
/// a standby's refusal or bad input is a definite failure, the rest unknown.
fn pinned_outcome(status: tonic::Status, read: bool) -> Completion {
    match status.code() {
        Code::NotFound if read => Completion::Read { found: None },
        Code::FailedPrecondition | Code::InvalidArgument => Completion::Fail {
            error: status.message().to_string(),
        },
        _ => Completion::Unknown {
            error: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

/// Clients that talk to one master only and never fail over, with
/// connections kept open all through the run.
pub(super) struct Pinned {
    /// One per master, connected through its client proxy.
    pub(super) clients: [PinnedClient; 2],
    /// Watches who is active, bypassing the proxies.
    pub(super) observers: [Client; 2],
    /// Process ids of their operations in the history.
    pub(super) process: usize,
}

impl Pinned {
    /// Keeps each pinned client's connection open (a status call every half
    /// second; one stuck on a paused master just waits).
    pub(super) fn keep_open(&self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        self.clients
            .iter()
            .map(|client| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = client.status() => {}
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            })
            .collect()
    }

    /// During a long pause of master `m`, until `until`: once the other one
    /// serves, WRITE fresh keys through it, then send the paused master READs
    /// of those keys (and of hot keys) and WRITEs, on its open connection.
    /// Returns how many operations were sent to the paused master.
    pub(super) async fn probe(
        &self,
        m: usize,
        until: Instant,
        workload: &Workload,
        recorder: &Arc<Recorder>,
        failover: &Client,
        n: u64,
    ) -> usize {
        let other = &self.observers[1 - m];
        loop {
            if Instant::now() + Duration::from_millis(1500) > until {
                return 0;
            }
            if other
                .endpoint_status()
                .await
                .is_ok_and(|s| s.role() == Some(Role::Active))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut fresh = Vec::new();
        for i in 0..5 {
            let key = format!("p{n}.{i}");
            if write(failover, self.process, &key, &format!("p{n}.{i}"), recorder).await {
                Workload::lock(&workload.acked).push(key.clone());
                fresh.push(key);
            }
        }
        if Instant::now() + Duration::from_millis(500) > until {
            return 0;
        }
        let paused = &self.clients[m];
        let mut sent = Vec::new();
        for key in fresh.iter().chain(workload.hot.iter()) {
            let (client, key, recorder) = (paused.clone(), key.clone(), recorder.clone());
            let process = self.process;
            sent.push(tokio::spawn(async move {
                let index = recorder.invoke(process, &key, Call::Read);
                recorder.complete(index, client.read(&key).await);
            }));
        }
        for i in 0..2 {
            let (client, recorder) = (paused.clone(), recorder.clone());
            let (key, process) = (format!("pw{n}.{i}"), self.process);
            sent.push(tokio::spawn(async move {
                let value = key.clone();
                let call = Call::Write {
                    value: value.clone(),
                };
                let index = recorder.invoke(process, &key, call);
                recorder.complete(index, client.write(&key, &value).await);
            }));
        }
        let ops = sent.len();
        for task in sent {
            let _ = task.await;
        }
        ops
    }
}
