//! The etcd `Maintenance` and `Cluster` services: member status and the member list, which is
//! what `etcdctl endpoint status|health` and `etcdctl member list` need. Everything that would
//! change the cluster or dump the store answers UNIMPLEMENTED: skiff does membership through
//! `skiff server --join` and backups through `skiff backup`.

use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::alarm_request::AlarmAction;
use skiff_proto::etcdserverpb::cluster_server::Cluster;
use skiff_proto::etcdserverpb::maintenance_server::Maintenance;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::backend::KvBackend;
use super::convert;
use super::error::EtcdError;

pub struct MaintenanceService<B> {
    backend: B,
}

impl<B: KvBackend> MaintenanceService<B> {
    pub fn new(backend: B) -> Self {
        MaintenanceService { backend }
    }

    fn header(&self) -> pb::ResponseHeader {
        let info = self.backend.header();
        convert::header(&info, info.revision)
    }
}

fn unsupported<T>(what: &'static str) -> Result<Response<T>, Status> {
    let _span = tracing::info_span!("etcd.unsupported", rpc = what).entered();
    tracing::debug!("etcd rpc not supported");
    Err(EtcdError::Unsupported(what).into())
}

#[tonic::async_trait]
impl<B: KvBackend> Maintenance for MaintenanceService<B> {
    /// skiff raises no alarms (it has no space quota), so there is never one to list or disarm.
    /// `etcdctl endpoint health` lists alarms after its health read.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let req = request.into_inner();
        let _span = tracing::info_span!("etcd.alarm", action = req.action).entered();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => {
                Ok(Response::new(pb::AlarmResponse {
                    header: Some(self.header()),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(EtcdError::Unsupported("activating alarms").into()),
            Err(_) => Err(EtcdError::InvalidEnum("alarm action").into()),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self
            .backend
            .status()
            .instrument(tracing::info_span!("etcd.status"))
            .await?;
        Ok(Response::new(convert::status(status)))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        unsupported("defragment")
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        unsupported("hash")
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        unsupported("hashkv")
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        unsupported("snapshot (use `skiff backup`)")
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        unsupported("move-leader")
    }
}

pub struct ClusterService<B> {
    backend: B,
}

impl<B: KvBackend> ClusterService<B> {
    pub fn new(backend: B) -> Self {
        ClusterService { backend }
    }
}

#[tonic::async_trait]
impl<B: KvBackend> Cluster for ClusterService<B> {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let _span = tracing::info_span!("etcd.member_list").entered();
        let info = self.backend.header();
        let members = self
            .backend
            .members()
            .into_iter()
            .map(convert::member)
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(convert::header(&info, info.revision)),
            members,
        }))
    }

    async fn member_add(
        &self,
        _request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        unsupported("member add (use `skiff server --join`)")
    }

    async fn member_remove(
        &self,
        _request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        unsupported("member remove")
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        unsupported("member update")
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        unsupported("member promote")
    }
}
