//! Tests of issuance and renewal, the certificates checked the way the nodes (rustls)
//! will check them.

use super::*;
use crate::crd::DsmClusterSpec;
use crate::fixtures::test_cluster;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};

fn names() -> Names {
    Names::of(&test_cluster(DsmClusterSpec::default())).expect("names")
}

fn now() -> Timestamp {
    Timestamp::from_second(1_780_000_000).expect("time")
}

/// id-kp-serverAuth and id-kp-clientAuth (1.3.6.1.5.5.7.3.1 and .2), DER-encoded:
/// `KeyUsage::required` fails a certificate that lacks the extension altogether,
/// where rustls' own `server_auth()` would let it pass.
const SERVER_AUTH: KeyUsage = KeyUsage::required(&[0x2b, 6, 1, 5, 5, 7, 3, 1]);
const CLIENT_AUTH: KeyUsage = KeyUsage::required(&[0x2b, 6, 1, 5, 5, 7, 3, 2]);

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from(parse_pem(pem).expect("PEM").contents)
}

/// Verifies `member` against `ca` as rustls does for `name` at `at`, for one usage.
fn verify(
    member: &str,
    ca: &str,
    name: &str,
    usage: KeyUsage,
    at: Timestamp,
) -> Result<(), webpki::Error> {
    let ca_der = der(ca);
    let anchors = [anchor_from_trusted_cert(&ca_der)?];
    let member_der = der(member);
    let cert = EndEntityCert::try_from(&member_der)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at.as_second()).expect("after 1970"),
    ));
    cert.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        time,
        usage,
        None,
        None,
    )?;
    let server_name = ServerName::try_from(name.to_string()).expect("a DNS name");
    cert.verify_is_valid_for_subject_name(&server_name)
}

#[test]
fn member_certificate_verifies_for_every_dialled_name_and_both_usages() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    let member = issue_member(&ca, &names, now()).expect("member");
    assert_eq!(member.ca, ca.cert);
    for name in [
        // What the ConfigMap, the operator and the masters' --advertise dial.
        "test-master.testns.svc",
        "test-backup.testns.svc",
        "test-leader.testns.svc",
        "test-master",
        "test-master.testns",
        "test-master.testns.svc.cluster.local",
        // A slave's --advertise: $(POD_NAME).<headless>.<ns>.svc.
        "test-slave-0.test-slaves.testns.svc",
        "test-slave-12.test-slaves.testns.svc.cluster.local",
        "test-slave-1.test-slaves.testns",
    ] {
        for usage in [SERVER_AUTH, CLIENT_AUTH] {
            verify(&member.cert, &ca.cert, name, usage, now())
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
    // Names of other clusters and namespaces are refused.
    for name in [
        "other-master.testns.svc",
        "test-master.otherns.svc",
        "test-slave-0.other-slaves.testns.svc",
    ] {
        assert!(
            verify(&member.cert, &ca.cert, name, SERVER_AUTH, now()).is_err(),
            "{name} verified"
        );
    }
    // Valid for a year, not for more.
    let later = now() + MEMBER_VALIDITY + SignedDuration::from_hours(1);
    assert!(
        verify(
            &member.cert,
            &ca.cert,
            "test-master.testns.svc",
            SERVER_AUTH,
            later
        )
        .is_err()
    );
}

#[test]
fn member_certificate_does_not_verify_against_another_ca() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    let other = generate_ca(&names, now()).expect("other CA");
    let member = issue_member(&ca, &names, now()).expect("member");
    assert!(
        verify(
            &member.cert,
            &other.cert,
            "test-master.testns.svc",
            SERVER_AUTH,
            now()
        )
        .is_err()
    );
    // Nor does the operator keep it when the CA changed under it.
    let moved = MemberPems {
        ca: other.cert.clone(),
        ..member.clone()
    };
    assert_eq!(
        reissue_reason(&moved, &other, &names, now()),
        Some(Reissue::OtherCa)
    );
    assert_eq!(
        reissue_reason(&member, &other, &names, now()),
        Some(Reissue::OtherCa)
    );
}

#[test]
fn renewal_happens_within_thirty_days_of_expiry_and_not_before() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    let member = issue_member(&ca, &names, now()).expect("member");
    assert_eq!(reissue_reason(&member, &ca, &names, now()), None);
    let expiry = now() + MEMBER_VALIDITY;
    let day = SignedDuration::from_hours(24);
    assert_eq!(
        reissue_reason(&member, &ca, &names, expiry - RENEW_BEFORE - day),
        None
    );
    for at in [expiry - RENEW_BEFORE + day, expiry + day] {
        assert_eq!(
            reissue_reason(&member, &ca, &names, at),
            Some(Reissue::Expiring { not_after: expiry })
        );
    }
}

#[test]
fn changed_names_a_foreign_key_or_garbage_are_reissued() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    let member = issue_member(&ca, &names, now()).expect("member");
    let renamed = Names {
        cluster: "other".to_string(),
        namespace: names.namespace.clone(),
    };
    assert_eq!(
        reissue_reason(&member, &ca, &renamed, now()),
        Some(Reissue::Names)
    );
    let another = issue_member(&ca, &names, now()).expect("member");
    let swapped = MemberPems {
        key: another.key,
        ..member.clone()
    };
    assert_eq!(
        reissue_reason(&swapped, &ca, &names, now()),
        Some(Reissue::KeyMismatch)
    );
    let garbage = MemberPems {
        cert: "not a certificate".to_string(),
        ..member.clone()
    };
    assert_eq!(
        reissue_reason(&garbage, &ca, &names, now()),
        Some(Reissue::Unreadable(TLS_CERT))
    );
}

#[test]
fn the_ca_is_a_ten_year_path_limited_ca_whose_key_is_checked() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    check_ca(&ca, "test-tls-ca").expect("a fresh CA is usable");
    let pem = parse_pem(&ca.cert).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let basic = cert
        .basic_constraints()
        .expect("extension")
        .expect("basic constraints");
    assert!(basic.value.ca);
    assert_eq!(basic.value.path_len_constraint, Some(0));
    let not_after = cert.validity().not_after.timestamp();
    assert_eq!(not_after, (now() + CA_VALIDITY).as_second());

    let other = generate_ca(&names, now()).expect("CA");
    let mixed = CaPems {
        key: other.key,
        ..ca.clone()
    };
    let err = check_ca(&mixed, "test-tls-ca").expect_err("mismatched key");
    assert!(err.to_string().contains("ca.key does not match"), "{err}");
}

#[test]
fn key_material_never_prints() {
    let names = names();
    let ca = generate_ca(&names, now()).expect("CA");
    let member = issue_member(&ca, &names, now()).expect("member");
    for printed in [format!("{ca:?}"), format!("{member:?}")] {
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    }
}
