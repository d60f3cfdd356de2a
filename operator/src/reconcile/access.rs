//! What dialling a cluster's nodes takes (the CA, a client certificate, a token), read
//! from the cluster's Secrets on every reconcile, and the TLS Secrets the operator issues
//! and renews itself when the cluster does not bring its own.
//!
//! Reading them on every reconcile picks up a rotated CA or token without a restart.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use tracing::info;

use super::{apply, event};
use crate::certs::{self, CaPems, MemberPems};
use crate::crd::{DsmCluster, TlsClientAuth};
use crate::error::{Error, Result};
use crate::names::{MANAGER, Names};
use crate::node::{self, NodeCredentials};
use crate::objects;

/// What dialling a cluster's nodes takes, or why it cannot be done yet (a Secret the
/// user provides is missing or incomplete). Without credentials the node calls are
/// skipped, as if the nodes were unreachable: an observation, not a reconcile failure.
pub(super) type Access = std::result::Result<NodeCredentials, String>;

/// Makes sure the TLS Secrets exist (issuing them when the operator does), and reads
/// what dialling the nodes takes: the CA, a client certificate when the masters demand
/// one, a read-write token when they demand tokens.
///
/// # Errors
/// API failures, and a CA Secret of the operator's that is unusable (it is never
/// replaced: every member trusts it). Problems with Secrets the user provides are not
/// errors but an `Err` [`Access`] saying what is missing.
pub(super) async fn node_access(
    secrets: &Api<Secret>,
    dc: &DsmCluster,
    names: &Names,
    events: &mut Vec<Event>,
) -> Result<Access> {
    let mut credentials = NodeCredentials::default();
    if let Some(name) = objects::member_tls_secret(dc, names) {
        let member = if dc.spec.tls.secret_name.is_some() {
            let Some(secret) = secrets.get_opt(&name).await.map_err(Error::Kube)? else {
                return Ok(Err(format!(
                    "the TLS Secret {name} (spec.tls.secretName) does not exist"
                )));
            };
            match MemberPems::from_secret(&secret) {
                Ok(member) => member,
                Err(why) => return Ok(Err(format!("the TLS Secret {name}: {why}"))),
            }
        } else {
            ensure_tls_secrets(secrets, dc, names, Timestamp::now(), events).await?
        };
        if dc.spec.tls.client_auth == Some(TlsClientAuth::Required) {
            credentials.identity = Some((member.cert, member.key));
        }
        credentials.ca = Some(member.ca);
    }
    if let Some(name) = &dc.spec.auth.secret_name {
        let Some(secret) = secrets.get_opt(name).await.map_err(Error::Kube)? else {
            return Ok(Err(format!(
                "the auth Secret {name} (spec.auth.secretName) does not exist"
            )));
        };
        let tokens = certs::secret_text(&secret, objects::TOKENS).unwrap_or_default();
        let Some(token) = node::first_token(&tokens) else {
            return Ok(Err(format!(
                "the auth Secret {name} has no token under `{}`",
                objects::TOKENS
            )));
        };
        match node::bearer(token) {
            Ok(value) => credentials.token = Some(value),
            Err(why) => return Ok(Err(format!("the auth Secret {name}: {why}"))),
        }
    }
    Ok(Ok(credentials))
}

/// Creates the CA Secret if it does not exist, and issues the member certificate Secret
/// when it does not exist or must be renewed ([`certs::reissue_reason`]); returns the
/// member Secret's contents. An existing CA is never replaced, and a valid member
/// Secret is left exactly as it is.
async fn ensure_tls_secrets(
    secrets: &Api<Secret>,
    dc: &DsmCluster,
    names: &Names,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> Result<MemberPems> {
    // `create`, not apply: it fails rather than overwrite a CA that appeared meanwhile.
    let create = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..PostParams::default()
    };
    let ca_name = names.tls_ca();
    let ca = match secrets.get_opt(&ca_name).await.map_err(Error::Kube)? {
        Some(secret) => CaPems::from_secret(&secret, &ca_name)?,
        None => {
            let ca = certs::generate_ca(names, now)?;
            secrets
                .create(&create, &objects::tls_ca_secret(dc, names, &ca)?)
                .await
                .map_err(Error::Kube)?;
            info!(secret = %ca_name, "generated the cluster CA");
            events.push(event(
                EventType::Normal,
                "GeneratedCA",
                "IssueCertificate",
                format!("generated the cluster CA in Secret {ca_name}"),
            ));
            ca
        }
    };
    let name = names.tls();
    // Why the existing certificate is replaced; `None` when there is none yet.
    let renewal = match secrets.get_opt(&name).await.map_err(Error::Kube)? {
        None => None,
        Some(secret) => Some(match MemberPems::from_secret(&secret) {
            Ok(member) => match certs::reissue_reason(&member, &ca, names, now) {
                None => return Ok(member),
                Some(why) => why,
            },
            Err(why) => why,
        }),
    };
    let member = certs::issue_member(&ca, names, now)?;
    let secret = objects::tls_secret(dc, names, &member)?;
    let note = match renewal {
        None => {
            secrets
                .create(&create, &secret)
                .await
                .map_err(Error::Kube)?;
            format!("issued the member certificate in Secret {name}")
        }
        Some(why) => {
            apply(secrets, &secret).await?;
            format!("renewed the member certificate in Secret {name}: {why}")
        }
    };
    info!(secret = %name, "{note}");
    events.push(event(
        EventType::Normal,
        "IssuedCertificate",
        "IssueCertificate",
        note,
    ));
    Ok(member)
}
