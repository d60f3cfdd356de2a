//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once.
//!
//! A replica leads while the Lease names it and it renews the Lease more often than its
//! duration. Another replica takes the Lease over only once `renewTime +
//! leaseDurationSeconds` has passed. Every write carries the `resourceVersion` it read,
//! so of two replicas racing for an expired Lease the API server lets exactly one win.
//! A leader that fails to renew stops reconciling at once (the process exits and
//! Kubernetes restarts it as a follower).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tracing::{info, warn};

/// What a replica may do with the Lease as it found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it naming us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder let it expire (or there is none): take it over.
    TakeOver,
    /// Another replica holds it and renews it: wait.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the Lease's content alone; a pure function of the clock's `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    let expires = spec.renew_time.or(spec.acquire_time).map(|t| {
        t.0 + SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)))
    });
    match expires {
        Some(expires) if !holder.is_empty() && expires > now => Decision::Follow { holder },
        _ => Decision::TakeOver,
    }
}

/// One replica's side of the election.
pub struct LeaderElection {
    /// The Lease's namespace-scoped API.
    pub api: Api<Lease>,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long the Lease lasts without renewal; renewals happen every third of it.
    pub ttl: Duration,
}

impl LeaderElection {
    fn lease(&self, previous: Option<&Lease>, now: Timestamp, take_over: bool) -> Lease {
        let previous_spec = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
        let transitions = previous_spec.lease_transitions.unwrap_or(0);
        Lease {
            metadata: ObjectMeta {
                name: Some(self.lease_name.clone()),
                resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX)),
                acquire_time: if take_over || previous.is_none() {
                    Some(MicroTime(now))
                } else {
                    previous_spec.acquire_time
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(if take_over {
                    transitions + 1
                } else {
                    transitions
                }),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Makes one attempt to acquire or renew the Lease; true when this replica leads.
    /// A conflict (someone else wrote first) is not an error: it means "not leading".
    ///
    /// # Errors
    /// When the API server cannot be reached or refuses for another reason.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.lease_name).await?;
        let now = Timestamp::now();
        let result = match decide(current.as_ref(), &self.identity, now) {
            Decision::Follow { .. } => return Ok(false),
            Decision::Create => {
                self.api
                    .create(&PostParams::default(), &self.lease(None, now, true))
                    .await
            }
            Decision::Renew => {
                let lease = self.lease(current.as_ref(), now, false);
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
            Decision::TakeOver => {
                let lease = self.lease(current.as_ref(), now, true);
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Waits until this replica leads.
    ///
    /// # Errors
    /// When the API server forbids this replica the Lease (HTTP 401 or 403): that is a
    /// matter of RBAC or of the namespace, which retrying does not fix. Other failures
    /// are logged and retried.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        let mut waiting_logged = false;
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    info!(identity = %self.identity, lease = %self.lease_name, "leading");
                    return Ok(());
                }
                Ok(false) if !waiting_logged => {
                    info!(lease = %self.lease_name, "another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
                    return Err(kube::Error::Api(status));
                }
                Err(error) => warn!(%error, "cannot read the leader Lease"),
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }

    /// Renews the Lease every third of its duration; returns when leadership is lost
    /// (someone else holds the Lease, or it could not be renewed in time).
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.try_lead().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("the leader Lease was taken over");
                    return;
                }
                Err(error) => {
                    warn!(%error, "cannot renew the leader Lease");
                    if last_renewal.elapsed() >= self.ttl {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_at: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).expect("time"))),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    #[test]
    fn without_a_lease_we_create_it() {
        assert_eq!(decide(None, "a", at(0)), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&lease("a", 100, 15)), "a", at(200)),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected() {
        assert_eq!(
            decide(Some(&lease("b", 100, 15)), "a", at(114)),
            Decision::Follow {
                holder: "b".to_string()
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&lease("b", 100, 15)), "a", at(116)),
            Decision::TakeOver
        );
    }

    #[tokio::test]
    async fn a_forbidden_lease_fails_at_once_instead_of_retrying() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                seen.push(request.uri().to_string());
                let forbidden = serde_json::json!({
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "reason": "Forbidden", "code": 403,
                    "message": "leases.coordination.k8s.io \"dsm-operator\" is forbidden",
                });
                send.send_response(
                    Response::builder()
                        .status(403)
                        .body(Body::from(serde_json::to_vec(&forbidden).expect("json")))
                        .expect("response"),
                );
            }
            seen
        });
        let election = LeaderElection {
            api: Api::namespaced(kube::Client::new(service, "default"), "default"),
            lease_name: "dsm-operator".to_string(),
            identity: "a".to_string(),
            ttl: Duration::from_secs(15),
        };
        let error = election.acquire().await.expect_err("forbidden");
        assert!(
            matches!(&error, kube::Error::Api(s) if s.code == 403),
            "{error}"
        );
        drop(election);
        let seen = server.await.expect("server");
        assert_eq!(
            seen,
            ["/apis/coordination.k8s.io/v1/namespaces/default/leases/dsm-operator"],
            "one request, no retry"
        );
    }

    #[test]
    fn a_released_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&lease("", 100, 15)), "a", at(101)),
            Decision::TakeOver
        );
    }
}
