//! The etcd `KV` service: Range, Put, DeleteRange, Txn and Compact over a `KvBackend`.

use prost::Message;
use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::kv_server::Kv;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::EtcdLimits;
use super::backend::KvBackend;
use super::convert;
use super::error::EtcdError;

pub struct KvService<B> {
    backend: B,
    limits: EtcdLimits,
}

impl<B: KvBackend> KvService<B> {
    pub fn new(backend: B, limits: EtcdLimits) -> Self {
        KvService { backend, limits }
    }

    /// etcd refuses writes whose encoding exceeds the limit (it checks the raft proposal; the
    /// request is what dominates it).
    fn check_size(&self, req: &impl Message) -> Result<(), EtcdError> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let serializable = req.serializable;
        let (read, view) = convert::range_request(req)?;
        let resp = self.backend.range(read, serializable).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        Ok(view.apply(resp, header))
    }

    async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        self.check_size(&req)?;
        let txn = convert::single_op_txn(convert::put_op(req)?);
        let resp = self.backend.txn(txn).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        convert::put_response(convert::single_response(resp)?, header)
    }

    async fn delete_range(&self, req: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, EtcdError> {
        self.check_size(&req)?;
        let txn = convert::single_op_txn(convert::delete_op(req)?);
        let resp = self.backend.txn(txn).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        convert::delete_response(convert::single_response(resp)?, header)
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.check_size(&req)?;
        let plan = convert::txn_request(req, self.limits.max_txn_ops)?;
        let resp = self.backend.txn(plan.request.clone()).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        plan.response(resp, header)
    }

    async fn compact(&self, req: pb::CompactionRequest) -> Result<pb::CompactionResponse, EtcdError> {
        // `physical` is accepted: the compaction target is recorded through raft before this
        // returns, so history below it is already unreadable; deletion continues in the
        // background either way.
        self.backend.compact(req.revision).await?;
        let info = self.backend.header();
        Ok(pb::CompactionResponse { header: Some(convert::header(&info, info.revision)) })
    }
}

/// Runs one unary call inside its span and turns the outcome into a gRPC reply.
async fn serve<T>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, EtcdError>>,
) -> Result<Response<T>, Status> {
    async move {
        match call.await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(err) => {
                tracing::debug!(error = %err.message(), "etcd request failed");
                Err(err.into())
            }
        }
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl<B: KvBackend> Kv for KvService<B> {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.range",
            key = %req.key.escape_ascii(),
            range_end = %req.range_end.escape_ascii(),
            revision = req.revision,
            serializable = req.serializable,
        );
        serve(span, self.range(req)).await
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("etcd.put", key = %req.key.escape_ascii(), value_len = req.value.len());
        serve(span, self.put(req)).await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.delete_range",
            key = %req.key.escape_ascii(),
            range_end = %req.range_end.escape_ascii(),
        );
        serve(span, self.delete_range(req)).await
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.txn",
            compares = req.compare.len(),
            success = req.success.len(),
            failure = req.failure.len(),
        );
        serve(span, self.txn(req)).await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("etcd.compact", revision = req.revision, physical = req.physical);
        serve(span, self.compact(req)).await
    }
}
