//! Generates the gRPC code for every .proto under proto/ with tonic-prost-build, using the
//! protoc binary vendored by protoc-bin-vendored (nothing to install on the build machine).

use std::io;

/// skiff's own services: implementers must provide every method (no default stubs).
const SKIFF_PROTOS: &[&str] = &["proto/raft.proto", "proto/admin.proto"];
/// The etcd v3 client API (packages `etcdserverpb` and `mvccpb`).
const ETCD_PROTOS: &[&str] = &["proto/etcd/etcdserver.proto", "proto/etcd/mvcc.proto"];

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let protos: Vec<&str> = SKIFF_PROTOS.iter().chain(ETCD_PROTOS).copied().collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &["proto"])
}
