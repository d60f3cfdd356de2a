//! The NetworkPolicies of a cluster (`spec.networkPolicy`), as plain functions of the spec.
//!
//! TLS and tokens decide who is *trusted*; these policies decide who may even *connect*,
//! so a member certificate or token that leaked is useless from a pod the policies keep
//! out. Two policies, both for ingress only (egress stays open: nodes need DNS and each
//! other, and the operator's own chart policy restricts its side):
//!
//! - `<name>-slaves` selects the slave pods: their gRPC port [`ports::SLAVE`] admits only
//!   the cluster's master and backup pods, which alone call `Replica`.
//! - `<name>-masters` selects master and backup: their gRPC ports [`ports::MASTER`] and
//!   [`ports::BACKUP`] admit the cluster's own members (slaves register and heartbeat
//!   there), the operator's pod ([`LABEL_OPERATOR`] in its namespace: `Kv.Status`,
//!   `Kv.Drain`), pods labelled [`LABEL_CLIENT`]`: <name>` in the cluster's namespace
//!   (the client pod carries it; label application pods the same way), and the peers
//!   listed in `spec.networkPolicy.allowedClients`.
//!
//! The metrics port [`ports::METRICS`] is open to everyone in both: Prometheus scrapes it,
//! and with TLS kubelet probes it (most CNIs exempt kubelet probes from policies anyway,
//! which is what keeps the gRPC probes of a plaintext cluster working). A policy without
//! a CNI that enforces NetworkPolicies changes nothing.

use std::collections::BTreeMap;

use dsm_wire::ports;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{
    LABEL_CLIENT, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, LABEL_OPERATOR, Names, labels,
};
use crate::objects::meta;

/// The label Kubernetes sets on every namespace to its name.
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// Pods of this cluster whose component is one of `components`.
fn members(names: &Names, components: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (LABEL_NAME.to_string(), "dsm".to_string()),
            (LABEL_INSTANCE.to_string(), names.cluster.clone()),
        ])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: LABEL_COMPONENT.to_string(),
            operator: "In".to_string(),
            values: Some(components.iter().map(|c| c.to_string()).collect()),
        }]),
    }
}

fn pods(selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(ports: &[u16]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(*port))),
            protocol: Some("TCP".to_string()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

/// The operator's pod: labelled [`LABEL_OPERATOR`]` = "true"`, in `namespace` when the
/// operator knows it (`POD_NAMESPACE`), in any namespace otherwise.
pub fn operator_peer(namespace: Option<&str>) -> NetworkPolicyPeer {
    let namespaces = LabelSelector {
        match_labels: namespace
            .map(|ns| BTreeMap::from([(NAMESPACE_NAME.to_string(), ns.to_string())])),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                LABEL_OPERATOR.to_string(),
                "true".to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// An ingress-only policy for the pods `selected`: `peers` may reach `ports`, anyone the
/// metrics port.
fn policy(
    dc: &DsmCluster,
    names: &Names,
    name: String,
    selected: LabelSelector,
    peers: Vec<NetworkPolicyPeer>,
    ports: &[u16],
) -> Result<NetworkPolicy> {
    Ok(NetworkPolicy {
        metadata: meta(dc, names, name, labels(names, "network-policy"))?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selected),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(peers),
                    ports: Some(tcp(ports)),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(tcp(&[ports::METRICS])),
                },
            ]),
            egress: None,
        }),
    })
}

/// `<name>-slaves`: only master and backup reach the slaves' gRPC port.
pub fn slaves_policy(dc: &DsmCluster, names: &Names) -> Result<NetworkPolicy> {
    policy(
        dc,
        names,
        names.slaves_policy(),
        members(names, &["slave"]),
        vec![pods(members(names, &["master", "backup"]))],
        &[ports::SLAVE],
    )
}

/// `<name>-masters`: the cluster's members, the operator, labelled clients and
/// `spec.networkPolicy.allowedClients` reach the masters' gRPC ports.
/// `operator_namespace` is where the operator runs, if known.
pub fn masters_policy(
    dc: &DsmCluster,
    names: &Names,
    operator_namespace: Option<&str>,
) -> Result<NetworkPolicy> {
    let mut peers = vec![
        pods(members(names, &["master", "backup", "slave"])),
        pods(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                LABEL_CLIENT.to_string(),
                names.cluster.clone(),
            )])),
            ..LabelSelector::default()
        }),
        operator_peer(operator_namespace),
    ];
    peers.extend(dc.spec.network_policy.allowed_clients.iter().cloned());
    policy(
        dc,
        names,
        names.masters_policy(),
        members(names, &["master", "backup"]),
        peers,
        &[ports::MASTER, ports::BACKUP],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DsmClusterSpec;
    use crate::fixtures::test_cluster;
    use crate::names::Seat;
    use crate::objects::{client_deployment, master_pod, slave_set};
    use dsm_wire::Role;
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    /// Whether a selector (labels and `In` expressions only, as here) selects `labels`.
    fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let by_label = selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let by_expression = selector.match_expressions.iter().flatten().all(|e| {
            assert_eq!(e.operator, "In");
            labels
                .get(&e.key)
                .is_some_and(|v| e.values.iter().flatten().any(|x| x == v))
        });
        by_label && by_expression
    }

    /// Which ports `policy` lets a pod with `labels` in the policy's namespace reach.
    fn reachable(policy: &NetworkPolicy, labels: &BTreeMap<String, String>) -> Vec<u16> {
        let spec = policy.spec.as_ref().expect("spec");
        let mut ports = Vec::new();
        for rule in spec.ingress.iter().flatten() {
            let admitted = match &rule.from {
                None => true,
                Some(peers) => peers.iter().any(|peer| {
                    // Peers with a namespace selector are for other namespaces here.
                    peer.namespace_selector.is_none()
                        && peer
                            .pod_selector
                            .as_ref()
                            .is_some_and(|s| selects(s, labels))
                }),
            };
            if admitted {
                for port in rule.ports.iter().flatten() {
                    if let Some(IntOrString::Int(p)) = port.port {
                        ports.push(u16::try_from(p).expect("a TCP port"));
                    }
                }
            }
        }
        ports.sort_unstable();
        ports
    }

    fn pod_labels(template: Option<&PodTemplateSpec>) -> BTreeMap<String, String> {
        template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("template labels")
    }

    #[test]
    fn only_master_and_backup_reach_the_slaves_and_only_the_cluster_and_clients_the_masters() {
        let dc = test_cluster(DsmClusterSpec::default());
        let names = Names::of(&dc).expect("names");
        let slaves = slaves_policy(&dc, &names).expect("policy");
        let masters = masters_policy(&dc, &names, Some("dsm-system")).expect("policy");

        let pod = |seat| {
            master_pod(&dc, &names, seat, Role::Standby, None)
                .expect("pod")
                .metadata
                .labels
                .expect("labels")
        };
        let master = pod(Seat::Master);
        let backup = pod(Seat::Backup);
        let sts = slave_set(&dc, &names, 3).expect("sts");
        let slave = pod_labels(sts.spec.as_ref().map(|s| &s.template));
        let client = client_deployment(&dc, &names).expect("client");
        let client = pod_labels(client.spec.as_ref().map(|s| &s.template));
        let app = BTreeMap::from([(LABEL_CLIENT.to_string(), "test".to_string())]);
        let other_cluster_client =
            BTreeMap::from([(LABEL_CLIENT.to_string(), "other".to_string())]);
        let mut other_cluster_master = master.clone();
        other_cluster_master.insert(LABEL_INSTANCE.to_string(), "other".to_string());
        let stranger = BTreeMap::from([("app".to_string(), "web".to_string())]);

        // The policies select the pods they guard, and nothing else.
        let selected = |p: &NetworkPolicy, l| {
            selects(
                p.spec
                    .as_ref()
                    .and_then(|s| s.pod_selector.as_ref())
                    .expect("selector"),
                l,
            )
        };
        assert!(selected(&slaves, &slave));
        assert!(!selected(&slaves, &master));
        assert!(selected(&masters, &master) && selected(&masters, &backup));
        assert!(!selected(&masters, &slave) && !selected(&masters, &client));

        for (who, labels) in [("master", &master), ("backup", &backup)] {
            assert_eq!(
                reachable(&slaves, labels),
                [ports::METRICS, ports::SLAVE],
                "{who}"
            );
        }
        for (who, labels) in [
            ("slave", &slave),
            ("client pod", &client),
            ("labelled app", &app),
            ("stranger", &stranger),
            ("other cluster's master", &other_cluster_master),
        ] {
            assert_eq!(reachable(&slaves, labels), [ports::METRICS], "{who}");
        }

        for (who, labels) in [
            ("master", &master),
            ("backup", &backup),
            ("slave", &slave),
            ("client pod", &client),
            ("labelled app", &app),
        ] {
            assert_eq!(
                reachable(&masters, labels),
                [ports::METRICS, ports::MASTER, ports::BACKUP],
                "{who}"
            );
        }
        for (who, labels) in [
            ("stranger", &stranger),
            ("other cluster's client", &other_cluster_client),
            ("other cluster's master", &other_cluster_master),
        ] {
            assert_eq!(reachable(&masters, labels), [ports::METRICS], "{who}");
        }
    }

    #[test]
    fn the_operator_and_allowed_clients_reach_the_masters_from_their_namespaces() {
        let mut spec = DsmClusterSpec::default();
        let apps = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".to_string(), "apps".to_string())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        spec.network_policy.allowed_clients = vec![apps.clone()];
        let dc = test_cluster(spec);
        let names = Names::of(&dc).expect("names");
        let policy = masters_policy(&dc, &names, Some("dsm-system")).expect("policy");
        let rule = &policy.spec.expect("spec").ingress.expect("ingress")[0];
        let peers = rule.from.as_ref().expect("peers");
        let operator = &peers[2];
        assert_eq!(
            operator
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get(NAMESPACE_NAME))
                .map(String::as_str),
            Some("dsm-system")
        );
        assert_eq!(
            operator
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get(LABEL_OPERATOR))
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(peers.last(), Some(&apps));

        // Not knowing its namespace, the operator is let in from any namespace.
        let anywhere = operator_peer(None);
        assert_eq!(anywhere.namespace_selector, Some(LabelSelector::default()));
    }
}
