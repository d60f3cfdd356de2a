//! Tests of whole reconciles against a mocked API server ([`crate::fixtures`]): the
//! exact requests made, the status written and the Events published.

use super::*;
use crate::certs::{self, CaPems, MemberPems};
use crate::crd::DsmClusterSpec;
use crate::fixtures::{
    Call, FakeNodes, active_status, bootstrapped, crash_looping, ready_slave_set, seat_pod,
    test_cluster, test_snapshot,
};
use dsm_wire::{Role, paths};
use k8s_openapi::jiff::SignedDuration;

/// Runs one reconcile against a mocked API server and returns the calls it made.
async fn reconcile_once(
    dc: &DsmCluster,
    slave_set: Option<StatefulSet>,
    pods: Vec<Pod>,
    nodes: Arc<FakeNodes>,
) -> Vec<Call> {
    let (result, calls) = reconcile_with_secrets(dc, slave_set, pods, nodes, vec![]).await;
    result.expect("reconcile succeeds");
    calls
}

/// One reconcile against a mocked API server that also holds `secrets`: its result
/// and the calls it made.
async fn reconcile_with_secrets(
    dc: &DsmCluster,
    slave_set: Option<StatefulSet>,
    pods: Vec<Pod>,
    nodes: Arc<FakeNodes>,
    secrets: Vec<Secret>,
) -> (Result<Action>, Vec<Call>) {
    let (ctx, server) = Context::test(dc, slave_set, pods, nodes);
    let server = server.with_secrets(secrets).run();
    let result = reconcile(Arc::new(dc.clone()), ctx).await;
    // The context (and with it every client) is gone: the server sees the end.
    (result, server.await.expect("api server task"))
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn body<'a>(calls: &'a [Call], line: &str) -> &'a serde_json::Value {
    calls
        .iter()
        .find(|c| c.line() == line)
        .and_then(|c| c.body.as_ref())
        .unwrap_or_else(|| panic!("no call `{line}` with a body"))
}

const SSA: &str = "?&force=true&fieldManager=dsm-operator";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/testns/networkpolicies";
const SECRETS: &str = "/api/v1/namespaces/testns/secrets";

/// Every apply a reconcile of a default cluster makes, in order, around its reads.
fn default_calls() -> Vec<String> {
    let core = "/api/v1/namespaces/testns";
    let apps = "/apis/apps/v1/namespaces/testns";
    vec![
        format!("PATCH {core}/configmaps/test-config{SSA}"),
        format!("PATCH {core}/persistentvolumeclaims/test-log{SSA}"),
        format!("PATCH {core}/services/test-master{SSA}"),
        format!("PATCH {core}/services/test-backup{SSA}"),
        format!("PATCH {core}/services/test-leader{SSA}"),
        format!("PATCH {core}/services/test-slaves{SSA}"),
        format!("PATCH /apis/policy/v1/namespaces/testns/poddisruptionbudgets/test-slaves{SSA}"),
        format!("PATCH {NETPOL}/test-slaves{SSA}"),
        format!("PATCH {NETPOL}/test-masters{SSA}"),
        format!("GET {apps}/statefulsets/test-slave"),
        format!(
            "GET {core}/pods?&labelSelector=app.kubernetes.io%2Fname%3Ddsm%2Capp.kubernetes.io%2Finstance%3Dtest"
        ),
        format!("PATCH {apps}/statefulsets/test-slave{SSA}"),
        format!("PATCH {core}/pods/test-master{SSA}"),
        format!("PATCH {core}/pods/test-backup{SSA}"),
        format!("PATCH {apps}/deployments/test-client{SSA}"),
    ]
}

const STATUS: &str = "PATCH /apis/dsm.io/v1alpha1/namespaces/testns/dsmclusters/test/status?&force=true&fieldManager=dsm-operator";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/testns/events?";

/// A running cluster: master active at epoch 1, backup standby, both up to date and
/// ready; `ready` of `replicas` slaves ready.
fn running(dc: &DsmCluster, replicas: i32, ready: i32) -> (StatefulSet, Vec<Pod>, Arc<FakeNodes>) {
    let names = Names::of(dc).expect("names");
    let hash = |seat| objects::master_pod_hash(dc, &names, seat).expect("hash");
    let pods = vec![
        seat_pod(
            &names,
            Seat::Master,
            &hash(Seat::Master),
            Role::Active,
            true,
        ),
        seat_pod(
            &names,
            Seat::Backup,
            &hash(Seat::Backup),
            Role::Standby,
            true,
        ),
    ];
    let nodes = FakeNodes {
        statuses: [(names.seat_address(Seat::Master), active_status(&names, 1))].into(),
        ..FakeNodes::default()
    };
    (ready_slave_set(replicas, ready), pods, Arc::new(nodes))
}

/// The status the reconciler writes for `dc` in the given state.
async fn status_after(
    dc: &DsmCluster,
    sts: StatefulSet,
    pods: Vec<Pod>,
    nodes: Arc<FakeNodes>,
) -> DsmClusterStatus {
    let calls = reconcile_once(dc, Some(sts), pods, nodes).await;
    serde_json::from_value(body(&calls, STATUS)["status"].clone()).expect("status")
}

#[tokio::test]
async fn create_applies_every_object_then_reports_creating() {
    let dc = test_cluster(DsmClusterSpec::default());
    let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;

    let mut expected = default_calls();
    expected.push(STATUS.to_string());
    assert_eq!(lines(&calls), expected);

    let sts = body(
        &calls,
        &format!("PATCH /apis/apps/v1/namespaces/testns/statefulsets/test-slave{SSA}"),
    );
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "DsmCluster");
    // No node answers yet: both pods start as standby; the leader Service selects none.
    let master = body(
        &calls,
        &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
    );
    assert_eq!(master["metadata"]["labels"]["dsm.io/role"], "standby");
    let status = &body(&calls, STATUS)["status"];
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/name=dsm,app.kubernetes.io/instance=test,app.kubernetes.io/component=slave"
    );
}

#[tokio::test]
async fn reconcile_is_a_no_op_once_the_status_is_written() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let first = reconcile_once(&dc, Some(sts.clone()), pods.clone(), nodes.clone()).await;
    let status: DsmClusterStatus =
        serde_json::from_value(body(&first, STATUS)["status"].clone()).expect("status");
    assert_eq!(status.phase, status::PHASE_RUNNING);
    assert_eq!(status.active_master.as_deref(), Some("test-master"));

    let dc = dc.with_status(status);
    let second = reconcile_once(&dc, Some(sts), pods, nodes).await;
    // The same applies with the same bodies; no status write, no Event.
    assert_eq!(lines(&second), default_calls());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.body, b.body, "{}", a.line());
    }
}

#[tokio::test]
async fn a_dead_slave_turns_the_status_degraded_with_an_event() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let dc = dc
        .clone()
        .with_status(status_after(&dc, sts, pods.clone(), nodes.clone()).await);

    let calls = reconcile_once(&dc, Some(ready_slave_set(3, 2)), pods, nodes).await;
    let mut expected = default_calls();
    expected.extend([STATUS.to_string(), EVENT.to_string()]);
    assert_eq!(lines(&calls), expected);

    let status = &body(&calls, STATUS)["status"];
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["readySlaves"], 2);
    let degraded = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
        .expect("Degraded condition");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["message"], "2/3 slaves ready");
    let event = body(&calls, EVENT);
    assert_eq!(event["reason"], "Degraded");
    assert_eq!(event["type"], "Warning");
}

#[tokio::test]
async fn scale_down_drains_the_last_slave_then_shrinks_the_statefulset() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let status = status_after(&dc, sts.clone(), pods.clone(), nodes.clone()).await;
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = 2;
    let mut dc = test_cluster(spec).with_status(status);
    dc.metadata.generation = Some(2);

    let calls = reconcile_once(&dc, Some(sts), pods, nodes.clone()).await;
    let drains = nodes.drains.lock().expect("drains").clone();
    assert_eq!(
        drains,
        vec![(
            "test-master.testns.svc:12345".to_string(),
            "test-slave-2".to_string()
        )]
    );
    // The master-capable pods read DSM_SLAVES, so they are outdated now, but they
    // wait (no apply) until the slaves have settled at the new size.
    let mut expected: Vec<String> = default_calls()
        .into_iter()
        .filter(|line| !line.contains("/pods/test-"))
        .collect();
    expected.extend([STATUS.to_string(), EVENT.to_string()]);
    assert_eq!(lines(&calls), expected);
    let sts = body(
        &calls,
        &format!("PATCH /apis/apps/v1/namespaces/testns/statefulsets/test-slave{SSA}"),
    );
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(body(&calls, EVENT)["reason"], "DrainedSlave");
    assert_eq!(body(&calls, STATUS)["status"]["phase"], "Updating");
}

/// The condition `type_` of a status written in `calls`.
fn written_condition<'a>(calls: &'a [Call], type_: &str) -> &'a serde_json::Value {
    body(calls, STATUS)["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition written"))
}

#[tokio::test]
async fn an_invalid_factor_rolls_nothing_out_and_says_why() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let status = status_after(&dc, sts.clone(), pods.clone(), nodes.clone()).await;
    // Scaled to five slaves with the factor still pinned at 2, a majority of the three
    // before but not of five.
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = 5;
    spec.replication.factor = Some(2);
    let mut dc = test_cluster(spec).with_status(status);
    dc.metadata.generation = Some(2);

    let calls = reconcile_once(&dc, Some(sts.clone()), pods.clone(), nodes.clone()).await;
    // No ConfigMap, StatefulSet or pod is touched: only the status and the Event.
    assert_eq!(lines(&calls), [STATUS, EVENT]);
    assert!(nodes.drains.lock().expect("drains").is_empty());
    let written = &body(&calls, STATUS)["status"];
    assert_eq!(written["phase"], "Degraded");
    assert_eq!(written["observedGeneration"], 2);
    let degraded = written_condition(&calls, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message
            .starts_with("spec.replication.factor 2 is not a majority of spec.slaves.replicas 5")
            && message.contains("use at least 3"),
        "{message}"
    );
    assert_eq!(written_condition(&calls, "Progressing")["status"], "False");
    let warning = body(&calls, EVENT);
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "InvalidSpec");
    assert_eq!(warning["note"], message);

    // Reconciled again with that status: nothing new to say, nothing written.
    let status = serde_json::from_value(written.clone()).expect("status");
    let dc = dc.with_status(status);
    let again = reconcile_once(&dc, Some(sts), pods, nodes).await;
    assert_eq!(lines(&again), Vec::<String>::new());
}

#[tokio::test]
async fn a_crash_looping_standby_stalls_the_rollout_and_says_why() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (_, mut pods, nodes) = running(&dc, 3, 3);
    let status = status_after(&dc, ready_slave_set(3, 3), pods.clone(), nodes.clone()).await;
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = 5;
    let mut dc = test_cluster(spec).with_status(status);
    dc.metadata.generation = Some(2);
    // The slaves scaled up; the standby was replaced with the new spec and crashes.
    let names = Names::of(&dc).expect("names");
    let hash = objects::master_pod_hash(&dc, &names, Seat::Backup).expect("hash");
    let standby = seat_pod(&names, Seat::Backup, &hash, Role::Standby, false);
    let log = "INFO dsm: starting backup\nerror: cannot open /var/lib/dsm/log: Permission denied (os error 13)\n";
    pods[1] = crash_looping(standby, 6, log);

    let calls = reconcile_once(&dc, Some(ready_slave_set(5, 5)), pods, nodes).await;
    // The outdated active master is left alone: replacing it now would leave no master.
    let mut expected: Vec<String> = default_calls()
        .into_iter()
        .filter(|line| !line.contains("/pods/test-master"))
        .collect();
    expected.extend([STATUS.to_string(), EVENT.to_string()]);
    assert_eq!(lines(&calls), expected);
    assert_eq!(body(&calls, STATUS)["status"]["phase"], "Degraded");
    let degraded = written_condition(&calls, "Degraded");
    assert_eq!(degraded["reason"], "CrashLoopBackOff");
    let error = "error: cannot open /var/lib/dsm/log: Permission denied (os error 13)";
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(message.contains(error), "{message}");
    assert_eq!(
        written_condition(&calls, "Progressing")["reason"],
        "RolloutStalled"
    );
    let warning = body(&calls, EVENT);
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "Degraded");
    assert!(warning["note"].as_str().unwrap_or_default().contains(error));
}

#[tokio::test]
async fn each_drained_slave_gets_an_event_of_its_own() {
    let dc = test_cluster(DsmClusterSpec::default());
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let dc = dc
        .clone()
        .with_status(status_after(&dc, sts, pods.clone(), nodes.clone()).await);
    // Five slaves running, three wanted: two reconciles, two drains, by one operator
    // (one Recorder, as in production).
    let (ctx, server) = Context::test(&dc, Some(ready_slave_set(5, 5)), pods, nodes.clone());
    let server = server.run();
    let dc = Arc::new(dc);
    for _ in 0..2 {
        reconcile(dc.clone(), ctx.clone())
            .await
            .expect("reconcile succeeds");
    }
    drop(ctx);
    let calls = server.await.expect("api server task");

    let drained: Vec<String> = nodes
        .drains
        .lock()
        .expect("drains")
        .iter()
        .map(|(_, slave)| slave.clone())
        .collect();
    assert_eq!(drained, ["test-slave-4", "test-slave-3"]);
    // Two Events created, none folded into the other's series (a PATCH).
    let events: Vec<&Call> = calls.iter().filter(|c| c.uri.contains("/events")).collect();
    assert!(
        events.iter().all(|c| c.line() == EVENT),
        "{:#?}",
        lines(&calls)
    );
    let told: Vec<(String, String)> = events
        .iter()
        .filter_map(|c| c.body.as_ref())
        .map(|e| {
            let note = e["note"].as_str().unwrap_or_default();
            let related = e["related"]["name"].as_str().unwrap_or_default();
            (note.to_string(), related.to_string())
        })
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    for ((note, related), slave) in told.iter().zip(["test-slave-4", "test-slave-3"]) {
        assert!(note.contains(&format!("off {slave};")), "{note}");
        assert_eq!(related, slave);
    }
}

#[tokio::test]
async fn paused_writes_only_the_status() {
    let spec = DsmClusterSpec {
        paused: true,
        ..DsmClusterSpec::default()
    };
    let dc = test_cluster(spec);
    let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;
    assert_eq!(lines(&calls), vec![STATUS.to_string()]);
    assert_eq!(body(&calls, STATUS)["status"]["phase"], "Paused");
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    let dc = Arc::new(test_cluster(DsmClusterSpec::default()));
    let (ctx, _server) = Context::test(&dc, None, vec![], Arc::default());
    let action = error_policy(dc, &Error::MissingObjectKey("metadata.uid"), ctx.clone());
    assert_eq!(action, Action::requeue(REQUEUE_ERROR));
    assert_eq!(
        ctx.metrics
            .failures
            .with_label_values(&["missing_object_key"])
            .get(),
        1
    );
}

#[test]
fn failover_and_recovery_raise_events() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let (sts, pods, nodes) = running(&dc, 3, 3);
    let mut observed = Observed {
        slave_set: Some(sts),
        pods,
        master: nodes.statuses.values().next().cloned(),
        ..Observed::default()
    };
    let plan = |dc: &DsmCluster, o: &Observed| {
        let hashes = [
            objects::master_pod_hash(dc, &names, Seat::Master).expect("hash"),
            objects::master_pod_hash(dc, &names, Seat::Backup).expect("hash"),
        ];
        crate::plan::plan(dc, &names, o, [&hashes[0], &hashes[1]])
    };
    let now = Timestamp::UNIX_EPOCH;
    let healthy = status::compute(&dc, &names, &observed, &plan(&dc, &observed), now);
    let dc = dc.with_status(healthy.clone());

    // The backup took over: a Failover event, and the lost master makes it degraded.
    observed.backup = observed.master.take().map(|mut reply| {
        reply.epoch = 2;
        reply
    });
    observed.pods.remove(0);
    let failed_over = status::compute(&dc, &names, &observed, &plan(&dc, &observed), now);
    let reasons: Vec<String> = transition_events(Some(&healthy), &failed_over)
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["Degraded", "Failover"]);

    let recovered: Vec<String> = transition_events(Some(&failed_over), &healthy)
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(recovered, ["Recovered", "Failover"]);
}

/// A TLS cluster with tokens from the Secret `test-auth`.
fn secured() -> DsmCluster {
    let mut spec = DsmClusterSpec::default();
    spec.tls.enabled = true;
    spec.auth.secret_name = Some("test-auth".to_string());
    test_cluster(spec)
}

fn auth_secret() -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("test-auth".to_string()),
            namespace: Some("testns".to_string()),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(
            [
                (
                    "tokens".to_string(),
                    k8s_openapi::ByteString(b"# admins\nrw-1\nrw-2\n".to_vec()),
                ),
                (
                    "read-only-tokens".to_string(),
                    k8s_openapi::ByteString(Vec::new()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// The Secret a call created or applied, as the API server would store it.
fn secret_body(calls: &[Call], line: &str) -> Secret {
    serde_json::from_value(body(calls, line).clone()).expect("a Secret")
}

/// The calls a first reconcile of [`secured`] makes around the default ones: the CA
/// and member Secrets are created, the auth Secret read.
fn secured_first_calls() -> Vec<String> {
    let mut expected = default_calls();
    let at = expected
        .iter()
        .position(|l| l.starts_with("GET /apis/apps/v1"))
        .expect("observe step");
    let create = format!("POST {SECRETS}?&fieldManager=dsm-operator");
    expected.splice(
        at..at,
        [
            format!("GET {SECRETS}/test-tls-ca"),
            create.clone(),
            format!("GET {SECRETS}/test-tls"),
            create,
            format!("GET {SECRETS}/test-auth"),
        ],
    );
    expected
}

#[tokio::test]
async fn tls_creates_the_ca_and_member_secrets_and_dials_with_them() {
    let dc = secured();
    let names = Names::of(&dc).expect("names");
    let nodes = Arc::new(FakeNodes::default());
    let (result, calls) =
        reconcile_with_secrets(&dc, None, vec![], nodes.clone(), vec![auth_secret()]).await;
    result.expect("reconcile succeeds");
    let mut expected = secured_first_calls();
    expected.extend([STATUS.to_string(), EVENT.to_string(), EVENT.to_string()]);
    assert_eq!(lines(&calls), expected);

    let posts: Vec<Secret> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.uri.contains("/secrets"))
        .map(|c| serde_json::from_value(c.body.clone().expect("body")).expect("Secret"))
        .collect();
    let [ca_secret, member_secret] = posts.as_slice() else {
        panic!("expected two Secrets created, got {}", posts.len());
    };
    assert_eq!(ca_secret.metadata.name.as_deref(), Some("test-tls-ca"));
    assert_eq!(member_secret.metadata.name.as_deref(), Some("test-tls"));
    assert_eq!(member_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    for secret in [ca_secret, member_secret] {
        let owners = secret.metadata.owner_references.as_ref().expect("owners");
        assert_eq!(owners[0].kind, "DsmCluster");
    }
    let ca = CaPems::from_secret(ca_secret, "test-tls-ca").expect("a usable CA");
    let member = MemberPems::from_secret(member_secret).expect("a full member Secret");
    assert_eq!(
        certs::reissue_reason(&member, &ca, &names, Timestamp::now()),
        None
    );

    // The operator dialled the masters with the CA and the first read-write token,
    // and without a client certificate (clientAuth is not `required`).
    let seen = nodes.credentials.lock().expect("credentials").clone();
    assert_eq!(seen.len(), 2, "master and backup");
    for credentials in seen {
        assert_eq!(credentials.ca.as_deref(), Some(member.ca.as_str()));
        assert!(credentials.identity.is_none());
        let token = credentials.token.expect("a token");
        assert_eq!(token.to_str().ok(), Some("Bearer rw-1"));
    }
    let reasons: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c.line() == EVENT)
        .filter_map(|c| c.body.as_ref().map(|b| &b["reason"]))
        .collect();
    assert_eq!(reasons, ["GeneratedCA", "IssuedCertificate"]);
    // Nothing of a key reaches an Event.
    for call in calls.iter().filter(|c| c.line() == EVENT) {
        let text = call
            .body
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_default();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    // The master pod mounts the member Secret and the tokens and probes over HTTP.
    let pod = body(
        &calls,
        &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"secretName\":\"test-tls\""), "{volumes}");
    assert!(
        volumes.contains("\"secretName\":\"test-auth\""),
        "{volumes}"
    );
    let probe = &pod["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(probe["httpGet"]["path"], "/readyz");
}

#[tokio::test]
async fn a_valid_member_secret_is_neither_patched_nor_reissued() {
    let dc = secured();
    let names = Names::of(&dc).expect("names");
    let ca = certs::generate_ca(&names, Timestamp::now()).expect("CA");
    let member = certs::issue_member(&ca, &names, Timestamp::now()).expect("member");
    let secrets = vec![
        objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret"),
        objects::tls_secret(&dc, &names, &member).expect("member Secret"),
        auth_secret(),
    ];
    let nodes = Arc::new(FakeNodes::default());
    let (result, calls) = reconcile_with_secrets(&dc, None, vec![], nodes, secrets).await;
    result.expect("reconcile succeeds");
    let mut expected: Vec<String> = secured_first_calls()
        .into_iter()
        .filter(|l| !l.starts_with("POST"))
        .collect();
    expected.push(STATUS.to_string());
    assert_eq!(lines(&calls), expected, "no Secret written, no Event");
}

#[tokio::test]
async fn a_member_certificate_near_expiry_is_renewed_under_the_same_ca() {
    let dc = secured();
    let names = Names::of(&dc).expect("names");
    let now = Timestamp::now();
    let ca = certs::generate_ca(&names, now).expect("CA");
    // Issued 340 days ago: it expires in 25 days, within the 30-day window.
    let old = certs::issue_member(&ca, &names, now - SignedDuration::from_hours(24 * 340))
        .expect("member");
    let secrets = vec![
        objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret"),
        objects::tls_secret(&dc, &names, &old).expect("member Secret"),
        auth_secret(),
    ];
    let (result, calls) = reconcile_with_secrets(&dc, None, vec![], Arc::default(), secrets).await;
    result.expect("reconcile succeeds");
    let patch = format!("PATCH {SECRETS}/test-tls{SSA}");
    assert!(lines(&calls).contains(&patch), "{:#?}", lines(&calls));
    assert!(
        !lines(&calls)
            .iter()
            .any(|l| l.starts_with(&format!("POST {SECRETS}"))),
        "the CA is kept"
    );
    let renewed = MemberPems::from_secret(&secret_body(&calls, &patch)).expect("member");
    assert_ne!(renewed.cert, old.cert);
    assert_eq!(renewed.ca, ca.cert);
    assert_eq!(certs::reissue_reason(&renewed, &ca, &names, now), None);
    let event = body(&calls, EVENT);
    assert_eq!(event["reason"], "IssuedCertificate");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("renewed the member certificate"), "{note}");
}

#[tokio::test]
async fn an_unusable_ca_secret_fails_the_reconcile_and_is_never_replaced() {
    let dc = secured();
    let names = Names::of(&dc).expect("names");
    let ca = certs::generate_ca(&names, Timestamp::now()).expect("CA");
    let mut broken = objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret");
    if let Some(data) = broken.data.as_mut() {
        data.remove(certs::CA_KEY);
    }
    let (result, calls) =
        reconcile_with_secrets(&dc, None, vec![], Arc::default(), vec![broken]).await;
    let error = result.expect_err("an unusable CA is an error");
    assert_eq!(error.metric_label(), "invalid_secret");
    assert!(error.to_string().contains("test-tls-ca"), "{error}");
    assert!(
        !lines(&calls)
            .iter()
            .any(|l| l.contains("/secrets") && !l.starts_with("GET")),
        "{:#?}",
        lines(&calls)
    );
}

#[tokio::test]
async fn a_missing_user_secret_skips_the_node_calls_but_not_the_reconcile() {
    let mut spec = DsmClusterSpec::default();
    spec.tls.enabled = true;
    spec.tls.secret_name = Some("from-cert-manager".to_string());
    let dc = test_cluster(spec);
    let nodes = Arc::new(FakeNodes::default());
    let (result, calls) = reconcile_with_secrets(&dc, None, vec![], nodes.clone(), vec![]).await;
    result.expect("reconcile succeeds");
    assert!(lines(&calls).contains(&format!("GET {SECRETS}/from-cert-manager")));
    // Nothing issued: the user's Secret is the user's.
    assert!(!lines(&calls).iter().any(|l| l.contains("test-tls")));
    assert!(nodes.credentials.lock().expect("credentials").is_empty());
    assert_eq!(body(&calls, STATUS)["status"]["phase"], "Creating");
    let pod = body(
        &calls,
        &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
    );
    assert!(
        pod["spec"]["volumes"]
            .to_string()
            .contains("\"secretName\":\"from-cert-manager\"")
    );
}

#[tokio::test]
async fn network_policies_are_removed_when_disabled() {
    let mut spec = DsmClusterSpec::default();
    spec.network_policy.enabled = false;
    let dc = test_cluster(spec);
    let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;
    let deletes: Vec<String> = lines(&calls)
        .into_iter()
        .filter(|l| l.contains("networkpolicies"))
        .collect();
    assert_eq!(
        deletes,
        [
            format!("DELETE {NETPOL}/test-slaves?"),
            format!("DELETE {NETPOL}/test-masters?")
        ]
    );
}

const CLAIM: &str = "GET /api/v1/namespaces/testns/persistentvolumeclaims/test-snapshots";

/// A PersistentVolumeClaim named `name` in `testns`.
fn claim(name: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("testns".to_string()),
            ..kube::api::ObjectMeta::default()
        },
        ..PersistentVolumeClaim::default()
    }
}

/// [`default_calls`] with the lookup of the snapshot claim after the pods are listed.
fn calls_with_claim_lookup() -> Vec<String> {
    let mut expected = default_calls();
    let at = expected
        .iter()
        .position(|l| l.starts_with("GET /api/v1/namespaces/testns/pods?"))
        .expect("pods listed");
    expected.insert(at + 1, CLAIM.to_string());
    expected
}

#[tokio::test]
async fn a_bootstrapped_cluster_creates_both_master_pods_restoring_the_snapshot() {
    let dc = test_cluster(bootstrapped(test_snapshot()));
    let (ctx, server) = Context::test(&dc, None, vec![], Arc::default());
    let server = server.with_claims(vec![claim("test-snapshots")]).run();
    reconcile(Arc::new(dc), ctx)
        .await
        .expect("reconcile succeeds");
    let calls = server.await.expect("api server task");

    let mut expected = calls_with_claim_lookup();
    expected.push(STATUS.to_string());
    assert_eq!(lines(&calls), expected);
    for pod in ["test-master", "test-backup"] {
        let applied = body(
            &calls,
            &format!("PATCH /api/v1/namespaces/testns/pods/{pod}{SSA}"),
        );
        let restore = &applied["spec"]["initContainers"][0];
        assert_eq!(restore["name"], "restore", "{pod}");
        assert_eq!(
            restore["args"],
            serde_json::json!([
                "snapshot",
                "restore",
                "/snapshot/backups/test-1.snap",
                "--log-dir",
                paths::LOG_DIR,
                "--if-empty"
            ]),
            "{pod}"
        );
        let volumes = applied["spec"]["volumes"].as_array().expect("volumes");
        let snapshot = volumes
            .iter()
            .find(|v| v["name"] == "snapshot")
            .expect("snapshot volume");
        assert_eq!(
            snapshot["persistentVolumeClaim"],
            serde_json::json!({"claimName": "test-snapshots", "readOnly": true}),
            "{pod}"
        );
    }
    // The slaves start empty: nothing of the snapshot in their template.
    let sts = body(
        &calls,
        &format!("PATCH /apis/apps/v1/namespaces/testns/statefulsets/test-slave{SSA}"),
    );
    assert!(!sts.to_string().contains("test-snapshots"), "{sts}");
}

#[tokio::test]
async fn a_missing_snapshot_claim_holds_the_master_pods_back_and_says_why() {
    let dc = test_cluster(bootstrapped(test_snapshot()));
    let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;
    // Everything but the master pods, which could only wait for the volume.
    let mut expected: Vec<String> = calls_with_claim_lookup()
        .into_iter()
        .filter(|line| !line.contains("/pods/test-"))
        .collect();
    expected.extend([STATUS.to_string(), EVENT.to_string(), EVENT.to_string()]);
    assert_eq!(lines(&calls), expected);

    let written = &body(&calls, STATUS)["status"];
    assert_eq!(written["phase"], "Degraded");
    let degraded = written_condition(&calls, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SnapshotClaimMissing");
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "the PersistentVolumeClaim test-snapshots of spec.bootstrap.snapshot does not exist"
        ),
        "{message}"
    );
    // The Degraded transition, and a Warning of its own naming the claim.
    let events: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c.line() == EVENT)
        .filter_map(|c| c.body.as_ref())
        .collect();
    let told: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        told,
        [("Warning", "Degraded"), ("Warning", "SnapshotClaimMissing")]
    );
    assert_eq!(events[1]["note"], message);

    // Reconciled again with that status: the claim is looked up again, the pods are
    // still held back, and no Event repeats what was said.
    let status = serde_json::from_value(written.clone()).expect("status");
    let dc = dc.with_status(status);
    let again = reconcile_once(&dc, None, vec![], Arc::default()).await;
    assert!(lines(&again).contains(&CLAIM.to_string()));
    assert!(
        !lines(&again)
            .iter()
            .any(|l| l.contains("/pods/test-") || l == EVENT)
    );
    assert_eq!(
        written_condition(&again, "Degraded")["reason"],
        "SnapshotClaimMissing"
    );
}

#[tokio::test]
async fn a_changed_bootstrap_replaces_no_pod_and_each_keeps_its_restore() {
    let created_from = test_snapshot();
    let dc = test_cluster(bootstrapped(created_from.clone()));
    let names = Names::of(&dc).expect("names");
    let (sts, listed, nodes) = running(&dc, 3, 3);
    // The running pods as the API server lists them: created restoring `created_from`.
    let pods: Vec<Pod> = listed
        .into_iter()
        .zip([(Seat::Master, Role::Active), (Seat::Backup, Role::Standby)])
        .map(|(listed, (seat, role))| {
            let mut pod =
                objects::master_pod(&dc, &names, seat, role, Some(&created_from)).expect("pod");
            pod.status = listed.status;
            pod
        })
        .collect();
    let status = status_after(&dc, sts.clone(), pods.clone(), nodes.clone()).await;

    let mut moved = created_from.clone();
    moved.path = "backups/test-2.snap".to_string();
    for spec in [bootstrapped(moved), DsmClusterSpec::default()] {
        let mut dc = test_cluster(spec).with_status(status.clone());
        dc.metadata.generation = Some(2);
        let calls = reconcile_once(&dc, Some(sts.clone()), pods.clone(), nodes.clone()).await;
        // No claim looked up, no pod deleted, no failover: the pods are re-applied as
        // they are, restore included (the API server would refuse any other).
        let mut expected = default_calls();
        expected.push(STATUS.to_string());
        assert_eq!(lines(&calls), expected, "{:?}", dc.spec.bootstrap);
        for (pod, seat) in pods.iter().zip([Seat::Master, Seat::Backup]) {
            let applied = body(
                &calls,
                &format!(
                    "PATCH /api/v1/namespaces/testns/pods/{}{SSA}",
                    names.seat(seat)
                ),
            );
            let spec = serde_json::to_value(pod.spec.as_ref()).expect("json");
            assert_eq!(applied["spec"], spec, "{seat:?}");
        }
    }
}
