//! The nemesis's clients: concurrent [`Client`]s (each retrying on its own:
//! its retries are not separate operations, WRITEs and DELETEs are
//! exactly-once) on a few *hot* keys, so that operations on a key overlap,
//! and on *fresh* keys all through the run (each written once, read by
//! others, often before it exists: NOT_FOUND is read and checked). On hot
//! keys, beside READs and WRITEs of unique values, a few operations are a
//! READ followed by a compare-and-set (CAS) of a unique value expecting the
//! version just read (or an absent key), and a few DELETE the key (rarely,
//! so READs mostly find values). Clients also increment the counters of
//! [`super::counters`]. Every call is recorded in the history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::counters::{COUNTERS, count_of};
use super::history::{Call, Completion, Recorder};
use crate::client::{Client, ClientConfig, ClientError};
use crate::version::{Expect, Version};

/// Fresh keys remembered for reads by other clients.
const RECENT_FRESH: usize = 256;

/// The keys clients share.
pub(super) struct Workload {
    /// The hot keys.
    pub(super) hot: Vec<String>,
    /// Fresh keys recently written (or being written), for others to read.
    recent: Mutex<VecDeque<String>>,
    /// Fresh keys whose WRITE was acknowledged, for the final reads.
    pub(super) acked: Mutex<Vec<String>>,
}

impl Workload {
    /// Clients sharing the hot keys `hot`, no fresh key written yet.
    pub(super) fn new(hot: Vec<String>) -> Self {
        Workload {
            hot,
            recent: Mutex::new(VecDeque::new()),
            acked: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, key: &str) {
        let mut recent = Self::lock(&self.recent);
        if recent.len() == RECENT_FRESH {
            recent.pop_front();
        }
        recent.push_back(key.to_string());
    }

    fn recent_key(&self, rng: &mut StdRng) -> Option<String> {
        let recent = Self::lock(&self.recent);
        (!recent.is_empty()).then(|| recent[rng.random_range(0..recent.len())].clone())
    }
}

/// One client: READs, WRITEs of unique values, compare-and-sets and DELETEs
/// on hot keys, increments of the counters, READs and WRITEs of fresh keys.
pub(super) async fn client_loop(
    process: usize,
    endpoints: Vec<String>,
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    seed: u64,
) {
    let client = Client::new(ClientConfig {
        endpoints,
        timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(3),
    });
    let mut rng =
        StdRng::seed_from_u64(seed ^ (process as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let value = format!("c{process}.{n}");
        let hot = &workload.hot[rng.random_range(0..workload.hot.len())];
        match rng.random_range(0..100) {
            0..=29 => {
                read(&client, process, hot, &recorder).await;
            }
            30..=49 => {
                write(&client, process, hot, &value, &recorder).await;
            }
            50..=54 => {
                if let Some(found) = read(&client, process, hot, &recorder).await {
                    let expect = found.map(|(_, version)| version);
                    let call = Call::CompareAndSet { value, expect };
                    perform(&client, process, hot, call, &recorder).await;
                }
            }
            55..=57 => {
                perform(&client, process, hot, Call::Delete, &recorder).await;
            }
            58..=67 => {
                let key = COUNTERS[rng.random_range(0..COUNTERS.len())];
                increment(&client, process, key, &value, &recorder).await;
            }
            68..=84 => {
                let key = format!("f{process}.{n}");
                workload.remember(&key);
                if write(&client, process, &key, &value, &recorder).await {
                    Workload::lock(&workload.acked).push(key);
                }
            }
            _ => {
                // A recent fresh key (maybe still being written), or one
                // nobody ever writes.
                let key = match workload.recent_key(&mut rng) {
                    Some(key) if rng.random_bool(0.9) => key,
                    _ => format!("never{process}.{n}"),
                };
                read(&client, process, &key, &recorder).await;
            }
        }
    }
}

/// Runs `call` on `key` through `client`, recorded in the history; returns
/// how it ended.
async fn perform(
    client: &Client,
    process: usize,
    key: &str,
    call: Call,
    recorder: &Recorder,
) -> Completion {
    let index = recorder.invoke(process, key, call.clone());
    let k = key.as_bytes();
    let result = match call {
        Call::Read => client.read(k).await.map(|found| Completion::Read {
            found: found.map(|(v, version)| (String::from_utf8_lossy(&v).into_owned(), version)),
        }),
        Call::Write { value } => client
            .write(k, value.as_bytes())
            .await
            .map(|version| Completion::Written { version }),
        Call::CompareAndSet { value, expect } => {
            let expect = expect.map_or(Expect::Absent, Expect::Version);
            client
                .write_if(k, value.as_bytes(), expect)
                .await
                .map(|version| Completion::Written { version })
        }
        Call::Delete => client
            .delete(k)
            .await
            .map(|version| Completion::Deleted { version }),
    };
    let completion = match result {
        Ok(completion) => completion,
        // Definite: the condition did not hold, or the server refused the
        // input. Nothing else is.
        Err(ClientError::ConditionFailed { current }) => Completion::Refused { current },
        Err(e @ ClientError::InvalidArgument(_)) => Completion::Fail {
            error: e.to_string(),
        },
        Err(e) => Completion::Unknown { error: short(&e) },
    };
    recorder.complete(index, completion.clone());
    completion
}

/// READs `key`: what it found (`Some(None)`: not found), or `None` when the
/// READ failed or its outcome is unknown.
pub(super) async fn read(
    client: &Client,
    process: usize,
    key: &str,
    recorder: &Recorder,
) -> Option<Option<(String, Version)>> {
    match perform(client, process, key, Call::Read, recorder).await {
        Completion::Read { found } => Some(found),
        _ => None,
    }
}

/// WRITEs `value` under `key`; true when acknowledged.
pub(super) async fn write(
    client: &Client,
    process: usize,
    key: &str,
    value: &str,
    recorder: &Recorder,
) -> bool {
    let call = Call::Write {
        value: value.to_string(),
    };
    matches!(
        perform(client, process, key, call, recorder).await,
        Completion::Written { .. }
    )
}

/// Increments counter `key`: READs its count (absent is 0), then writes the
/// next count, tagged with the unique `tag`, by a compare-and-set expecting
/// the version read. A refused increment is just not counted.
async fn increment(client: &Client, process: usize, key: &str, tag: &str, recorder: &Recorder) {
    let Some(found) = read(client, process, key, recorder).await else {
        return;
    };
    let (count, expect) = match found {
        None => (0, None),
        Some((value, version)) => match count_of(&value) {
            Some(count) => (count, Some(version)),
            // Not a count: the history check reports a value nobody wrote,
            // and the counter check the final value.
            None => return,
        },
    };
    let call = Call::CompareAndSet {
        value: format!("{}:{tag}", count + 1),
        expect,
    };
    perform(client, process, key, call, recorder).await;
}

fn short(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable { attempts, .. } => {
            format!("unavailable after {attempts} attempt(s)")
        }
        other => other.to_string().chars().take(120).collect(),
    }
}
