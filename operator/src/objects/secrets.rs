//! The cluster's Secrets: the TLS Secrets the operator writes, and what each pod mounts
//! of them and of the token Secret.
//!
//! With `spec.tls.enabled` every member mounts the member certificate Secret at
//! [`TLS_DIR`] (the operator's own, or the user's: [`member_tls_secret`]). With
//! `spec.auth.secretName` master and backup mount the token files at [`AUTH_DIR`]. The
//! client pod only ever gets the CA certificate and a token, never a private key
//! (`client_security`).

use std::collections::BTreeMap;

use dsm_wire::env;
use dsm_wire::paths::{AUTH_DIR, TLS_DIR};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, Secret, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};

use super::{env_var, meta};
use crate::certs::{self, CaPems, MemberPems};
use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{Names, labels};

/// What a pod gets of the Secrets: the Secret volumes, their mounts and the `DSM_*`
/// variables pointing at the files.
pub(super) type SecretMounts = (Vec<Volume>, Vec<VolumeMount>, Vec<EnvVar>);

/// Key of the read-write tokens (one per line) in the auth Secret.
pub const TOKENS: &str = "tokens";
/// Key of the read-only tokens in the auth Secret.
pub const READ_ONLY_TOKENS: &str = "read-only-tokens";
/// Key of the client pod's token in the auth Secret (optional).
pub const CLIENT_TOKEN: &str = "client-token";

/// The Secret holding the member certificate, when TLS is on: the user's
/// (`spec.tls.secretName`, e.g. cert-manager's) or the one the operator issues.
pub fn member_tls_secret(dc: &DsmCluster, names: &Names) -> Option<String> {
    let tls = &dc.spec.tls;
    tls.enabled
        .then(|| tls.secret_name.clone().unwrap_or_else(|| names.tls()))
}

/// A read-only volume of some keys of a Secret, readable by the containers' group only.
fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                keys.iter()
                    .map(|key| KeyToPath {
                        key: key.to_string(),
                        path: key.to_string(),
                        mode: None,
                    })
                    .collect(),
            ),
            // fsGroup owns the files: 0440 keeps the keys from every other user.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// What a member needs for TLS and, for master and backup (`tokens`), client tokens: the
/// Secret volumes, their mounts and the `DSM_*` variables pointing at the files.
pub(super) fn member_security(dc: &DsmCluster, names: &Names, tokens: bool) -> SecretMounts {
    let (mut volumes, mut mounts, mut vars) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(secret) = member_tls_secret(dc, names) {
        volumes.push(secret_volume(
            "tls",
            &secret,
            &[certs::TLS_CERT, certs::TLS_KEY, certs::CA_CERT],
        ));
        mounts.push(read_only_mount("tls", TLS_DIR));
        vars.push(env_var(
            env::TLS_CERT,
            format!("{TLS_DIR}/{}", certs::TLS_CERT),
        ));
        vars.push(env_var(
            env::TLS_KEY,
            format!("{TLS_DIR}/{}", certs::TLS_KEY),
        ));
        vars.push(env_var(
            env::TLS_CA,
            format!("{TLS_DIR}/{}", certs::CA_CERT),
        ));
        if let Some(mode) = dc.spec.tls.client_auth {
            vars.push(env_var(env::TLS_CLIENT_AUTH, mode.as_str()));
        }
    }
    if let (true, Some(secret)) = (tokens, &dc.spec.auth.secret_name) {
        volumes.push(secret_volume("auth", secret, &[TOKENS, READ_ONLY_TOKENS]));
        mounts.push(read_only_mount("auth", AUTH_DIR));
        vars.push(env_var(env::TOKEN_FILE, format!("{AUTH_DIR}/{TOKENS}")));
        vars.push(env_var(
            env::READ_ONLY_TOKEN_FILE,
            format!("{AUTH_DIR}/{READ_ONLY_TOKENS}"),
        ));
    }
    (volumes, mounts, vars)
}

/// What the client pod gets of the Secrets: the CA certificate alone, never a key, and
/// its own token.
pub(super) fn client_security(dc: &DsmCluster, names: &Names) -> SecretMounts {
    let (mut volumes, mut mounts, mut vars) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(secret) = member_tls_secret(dc, names) {
        volumes.push(secret_volume("tls-ca", &secret, &[certs::CA_CERT]));
        mounts.push(read_only_mount("tls-ca", TLS_DIR));
        vars.push(env_var(
            env::TLS_CA,
            format!("{TLS_DIR}/{}", certs::CA_CERT),
        ));
    }
    if let Some(secret) = &dc.spec.auth.secret_name {
        vars.push(EnvVar {
            name: env::TOKEN.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: CLIENT_TOKEN.to_string(),
                    // Without one the pod still starts; calls are then refused.
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    (volumes, mounts, vars)
}

fn secret_data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(key, pem)| (key.to_string(), ByteString(pem.as_bytes().to_vec())))
        .collect()
}

/// The Secret `<name>-tls-ca` holding the cluster CA the operator generated (`ca.crt`,
/// `ca.key`). Only the operator reads it; no pod mounts it.
pub fn tls_ca_secret(dc: &DsmCluster, names: &Names, ca: &CaPems) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dc, names, names.tls_ca(), labels(names, "tls"))?,
        type_: Some("Opaque".to_string()),
        data: Some(secret_data(&[
            (certs::CA_CERT, &ca.cert),
            (certs::CA_KEY, &ca.key),
        ])),
        ..Secret::default()
    })
}

/// The `kubernetes.io/tls` Secret `<name>-tls` every member mounts (`tls.crt`,
/// `tls.key`, `ca.crt`: the layout of cert-manager's Secrets too).
pub fn tls_secret(dc: &DsmCluster, names: &Names, member: &MemberPems) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dc, names, names.tls(), labels(names, "tls"))?,
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(secret_data(&[
            (certs::TLS_CERT, &member.cert),
            (certs::TLS_KEY, &member.key),
            (certs::CA_CERT, &member.ca),
        ])),
        ..Secret::default()
    })
}
