//! skiff-proto: the gRPC wire types, generated from the .proto files under `proto/`.
//!
//! What lives here (and only here):
//! - `raft`: the raft peer service (port 2380); payloads are opaque bincode bytes.
//! - `admin`: join, membership and status on the API port (6443).
//! - `cri`: the CRI v1 subset the agent uses with containerd.
//! - `agent`: node agents and the control plane (`NodeAgent` on 6443, `Kubelet` on 10250).
//! - `etcdserverpb` and `mvccpb`: the etcd v3 client API (port 2379), wire-compatible with
//!   etcd 3.4 so etcdctl and clientv3 work unmodified. They are sibling modules because the
//!   generated `etcdserverpb` code refers to `super::mvccpb`.
//! - `K8S_DESCRIPTOR_SET`: the Kubernetes protobuf wire schema (request bodies from kubectl).
//!
//! No hand-written logic: the services are implemented by the crates that own the behaviour.

pub mod raft {
    tonic::include_proto!("skiff.raft.v1");
}

pub mod admin {
    tonic::include_proto!("skiff.admin.v1");
}

pub mod agent {
    tonic::include_proto!("skiff.agent.v1");
}

/// The Kubernetes Container Runtime Interface (subset), to drive containerd.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Encoded `FileDescriptorSet` of the Kubernetes messages kubectl may send as protobuf
/// (proto/k8s/); read by reflection, no generated types.
pub const K8S_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/k8s_descriptor_set.bin"));

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
