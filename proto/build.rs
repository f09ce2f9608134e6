//! Generates the gRPC code for every .proto under proto/ with tonic-prost-build, using the
//! protoc binary vendored by protoc-bin-vendored (nothing to install on the build machine).

use std::io;

/// skiff's own services: implementers must provide every method (no default stubs).
const SKIFF_PROTOS: &[&str] = &[
    "proto/raft.proto",
    "proto/admin.proto",
    "proto/agent.proto",
    "proto/cri/api.proto",
];
/// The etcd v3 client API (packages `etcdserverpb` and `mvccpb`).
const ETCD_PROTOS: &[&str] = &["proto/etcd/etcdserver.proto", "proto/etcd/mvcc.proto"];
/// The Kubernetes wire schema kubectl's protobuf request bodies follow. No Rust code is generated
/// for it: the API server decodes by reflection over this descriptor set, so adding a message is
/// a schema change only.
const K8S_PROTO_DIR: &str = "proto/k8s";

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);

    let protos: Vec<&str> = SKIFF_PROTOS.iter().chain(ETCD_PROTOS).copied().collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &["proto"])?;
    write_k8s_descriptor_set(&protoc)
}

/// Compiles every proto/k8s/*.proto into `$OUT_DIR/k8s_descriptor_set.bin`.
fn write_k8s_descriptor_set(protoc: &std::path::Path) -> io::Result<()> {
    println!("cargo:rerun-if-changed={K8S_PROTO_DIR}");
    let mut files: Vec<String> = std::fs::read_dir(K8S_PROTO_DIR)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    files.sort();
    let out_dir = std::env::var("OUT_DIR").map_err(io::Error::other)?;
    let out = std::path::Path::new(&out_dir).join("k8s_descriptor_set.bin");
    let status = std::process::Command::new(protoc)
        .arg("--proto_path=proto")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(&files)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "protoc failed on {K8S_PROTO_DIR}: {status}"
        )));
    }
    Ok(())
}
