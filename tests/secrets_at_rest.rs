//! Secrets are encrypted at rest (design.md): what etcdctl reads from the store under
//! /registry/secrets/ is kube-apiserver's `k8s:enc:aesgcm:v1:` form with nothing of the data in
//! it, on every member (a joined one got the key with the CA), while kubectl reads the Secret
//! as it was written from any member, also after a restart. Other kinds stay plain JSON; the
//! ServiceAccount token signing key is sealed too.

mod common;

use std::time::Duration;

use common::kubectl::kubectl;
use common::*;

const PASSWORD: &str = "hunter2-s3cret";
/// base64 of PASSWORD: what a Secret's JSON holds.
const PASSWORD_B64: &str = "aHVudGVyMi1zM2NyZXQ=";

fn stored_value(cluster: &Cluster, member: usize, key: &str) -> String {
    let out = cluster.etcdctl(member, &["get", key, "--print-value-only"]);
    assert_ok(&out, "etcdctl get");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn secrets_are_sealed_in_the_store_and_read_back_by_kubectl_on_every_member() {
    let mut cluster = Cluster::start(120, 2, &[]);
    cluster.wait_for_voters(2);
    let k = kubectl(&cluster, None);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        &format!("--from-literal=password={PASSWORD}"),
    ]);
    k.ok(&["create", "configmap", "plain", "--from-literal=color=blue"]);

    // What the store holds, read on both members.
    for member in 0..2 {
        let mut sealed = String::new();
        wait_for(Duration::from_secs(10), "the secret on the member", || {
            sealed = stored_value(&cluster, member, "/registry/secrets/default/db");
            !sealed.is_empty()
        });
        assert!(
            sealed.starts_with("k8s:enc:aesgcm:v1:skiff-"),
            "member {member} stores {sealed:?}"
        );
        assert!(!sealed.contains(PASSWORD) && !sealed.contains(PASSWORD_B64));
        assert!(!sealed.contains("\"kind\""), "no JSON in the clear");
        let config = stored_value(&cluster, member, "/registry/configmaps/default/plain");
        assert!(config.contains("\"color\":\"blue\""), "{config}");
    }

    // So is the private key that signs ServiceAccount tokens (made at the first token).
    wait_for(Duration::from_secs(20), "a ServiceAccount token", || {
        k.run(&["create", "token", "default"]).status.success()
    });
    let signing_key = stored_value(&cluster, 0, "/registry/skiff/serviceaccount-signing-key");
    assert!(
        signing_key.starts_with("k8s:enc:aesgcm:v1:") && !signing_key.contains("PRIVATE KEY"),
        "{signing_key}"
    );

    // The key file: the same on both members, readable by root only.
    let key_file = |i: usize| cluster.nodes[i].data.join("pki/secrets-encryption.key");
    let first = std::fs::read_to_string(key_file(0)).expect("key file on node1");
    assert_eq!(
        first,
        std::fs::read_to_string(key_file(1)).expect("key file on node2")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key_file(1))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // kubectl reads the Secret as written from either member; an update is sealed anew.
    for member in 0..2 {
        let k = kubectl(&cluster, Some(member));
        assert_eq!(
            k.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]),
            PASSWORD_B64
        );
    }
    let before = stored_value(&cluster, 0, "/registry/secrets/default/db");
    k.ok(&[
        "patch",
        "secret",
        "db",
        "--type=merge",
        "-p",
        r#"{"stringData":{"user":"admin"}}"#,
    ]);
    let after = stored_value(&cluster, 0, "/registry/secrets/default/db");
    assert_ne!(before, after);
    assert!(after.starts_with("k8s:enc:aesgcm:v1:") && !after.contains("admin"));

    // A value sealed with a key no member holds (written around the API) is a clear error for
    // that object, and the rest of the API goes on.
    let out = cluster.etcdctl(
        0,
        &[
            "put",
            "/registry/secrets/default/foreign",
            "k8s:enc:aesgcm:v1:elsewhere:0123456789abcdefghij",
        ],
    );
    assert_ok(&out, "etcdctl put");
    let refused = k.fails(&["get", "secret", "foreign"]);
    assert!(refused.contains("elsewhere"), "{refused}");
    assert_eq!(
        k.ok(&["get", "configmap", "plain", "-o", "jsonpath={.data.color}"]),
        "blue"
    );
    k.ok(&["delete", "configmap", "plain"]);

    // A restarted member still opens what it stored.
    cluster.kill(1);
    cluster.restart(1);
    cluster.wait_for_voters(2);
    let k2 = kubectl(&cluster, Some(1));
    wait_for(
        Duration::from_secs(20),
        "the restarted member's API",
        || k2.run(&["get", "secret", "db"]).status.success(),
    );
    assert_eq!(
        k2.ok(&["get", "secret", "db", "-o", "jsonpath={.data.user}"]),
        "YWRtaW4="
    );
}
