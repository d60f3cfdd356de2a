//! The ConfigMap every DSM pod reads its flags from, and the checksums that roll pods when
//! it changes.
//!
//! Config changes roll: each pod template carries the checksum of the configuration its
//! component reads (and each master-capable pod a hash of its whole spec, config
//! included: [`super::master_pod_hash`]), so a change makes the StatefulSet roll its
//! slaves and the reconciler replace outdated masters, and only the pods a change
//! concerns restart.

use std::collections::BTreeMap;

use dsm_wire::{env, paths, ports};
use k8s_openapi::api::core::v1::ConfigMap;

use super::{hash_of, meta};
use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{Names, Seat, labels};

/// Configuration keys (the nodes' `DSM_*` flag variables) every component reads; the
/// checksum of a component's keys rolls exactly the pods a change concerns.
const SHARED_KEYS: [&str; 3] = [env::MASTER, env::BACKUP, env::METRICS_LISTEN];

/// The ConfigMap's data: cluster-wide flags of the `dsm` binary as environment variables.
pub fn config_data(dc: &DsmCluster, names: &Names) -> BTreeMap<String, String> {
    let spec = &dc.spec;
    let mut data = BTreeMap::from([
        (env::MASTER.to_string(), names.seat_address(Seat::Master)),
        (env::LOG_DIR.to_string(), paths::LOG_DIR.to_string()),
        (
            env::METRICS_LISTEN.to_string(),
            format!("0.0.0.0:{}", ports::METRICS),
        ),
        (env::SLAVES.to_string(), spec.slaves.replicas.to_string()),
        (
            env::REPLICATION_FACTOR.to_string(),
            spec.write_quorum().to_string(),
        ),
        (env::LEASE_TTL.to_string(), spec.timeouts.lease_ttl.clone()),
    ]);
    if spec.backup.enabled {
        data.insert(env::BACKUP.to_string(), names.seat_address(Seat::Backup));
    }
    data
}

/// Checksum of the configuration master-capable pods read (all of it).
pub fn master_config_checksum(dc: &DsmCluster, names: &Names) -> Result<String> {
    hash_of(&config_data(dc, names))
}

/// Checksum of the configuration slaves and clients read (the addresses only: scaling,
/// which changes `DSM_SLAVES`, must not restart every slave).
pub fn shared_config_checksum(dc: &DsmCluster, names: &Names) -> Result<String> {
    let data = config_data(dc, names);
    let shared: BTreeMap<&str, Option<&String>> =
        SHARED_KEYS.iter().map(|k| (*k, data.get(*k))).collect();
    hash_of(&shared)
}

/// The ConfigMap every pod reads its flags from (`envFrom`).
pub fn config_map(dc: &DsmCluster, names: &Names) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: meta(dc, names, names.config(), labels(names, "config"))?,
        data: Some(config_data(dc, names)),
        ..ConfigMap::default()
    })
}
