//! Durability and bad input against real processes: acknowledged writes survive SIGKILL of every
//! member; garbage and oversized requests get clear errors and break nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};

#[test]
fn acknowledged_writes_survive_sigkill_of_every_member() {
    let mut cluster = Cluster::start(15, 3, &[]);
    let rt = runtime();
    let acknowledged = rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(etcd_client(&cluster, i).await);
        }
        let mut acknowledged = 0;
        for n in 0..1000 {
            let client = &mut clients[n % 3];
            let put = PutRequest {
                key: format!("/durable/{n:04}").into_bytes(),
                value: vec![b'x'; 256],
                ..Default::default()
            };
            client.put(put).await.expect("acknowledged put");
            acknowledged += 1;
        }
        acknowledged
    });
    assert_eq!(acknowledged, 1000);
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for_voters(3);
    let count = rt.block_on(async {
        let mut client = etcd_client(&cluster, 1).await;
        let req = RangeRequest {
            key: b"/durable/".to_vec(),
            range_end: b"/durable0".to_vec(),
            count_only: true,
            ..Default::default()
        };
        client.range(req).await.expect("range").into_inner().count
    });
    assert_eq!(
        count, 1000,
        "every acknowledged write is present after SIGKILL of all members"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_breaks_nothing() {
    let cluster = Cluster::start(16, 3, &[]);
    // Garbage on every port of every member.
    for node in &cluster.nodes {
        for port in [6443, 2379, 2380] {
            if let Ok(mut stream) = TcpStream::connect((node.ip.as_str(), port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    stream.write_all(b"\x16\x03\x01garbage that is not TLS\r\n\r\n\x00\xff\xfe");
                let mut sink = [0u8; 64];
                let _ = stream.read(&mut sink);
            }
        }
    }
    let rt = runtime();
    rt.block_on(async {
        let mut client = etcd_client(&cluster, 0).await;
        // Oversized value: over the 1.5 MiB default, refused like etcd.
        let big = PutRequest {
            key: b"/big".to_vec(),
            value: vec![0u8; 1700 * 1024],
            ..Default::default()
        };
        let err = client.put(big).await.expect_err("oversized put refused");
        assert!(err.message().contains("request is too large"), "{err:?}");
        // Far over the limit: refused by the gRPC layer before decoding, as etcd does.
        let huge = PutRequest {
            key: b"/big".to_vec(),
            value: vec![0u8; 8 << 20],
            ..Default::default()
        };
        let err = client.put(huge).await.expect_err("huge put refused");
        assert!(
            matches!(
                err.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{err:?}"
        );
        // Empty key.
        let err = client
            .put(PutRequest {
                key: Vec::new(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("empty key");
        assert!(err.message().contains("key is not provided"), "{err:?}");
        // Future revision.
        let err = client
            .range(RangeRequest {
                key: b"/x".to_vec(),
                revision: 1_000_000,
                ..Default::default()
            })
            .await
            .expect_err("future revision");
        assert!(err.message().contains("future revision"), "{err:?}");
        // Nothing was written, and the store still works.
        let found = client
            .range(RangeRequest {
                key: b"/big".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert_eq!(found.count, 0);
        client
            .put(PutRequest {
                key: b"/ok".to_vec(),
                value: b"fine".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
    });
    // Garbage through etcdctl too: a malformed txn is a clear client-side error.
    for i in 0..3 {
        let out = assert_ok(
            &cluster.etcdctl(i, &["get", "/ok", "--print-value-only"]),
            "get",
        );
        assert_eq!(out.trim(), "fine", "member {i} serves after garbage input");
    }
    // `skiff status` works and shows every member healthy.
    let status = cluster.status(2).expect("status");
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(3));
}
