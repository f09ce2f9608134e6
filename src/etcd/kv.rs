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

    /// etcd refuses writes whose encoding exceeds the limit. It checks the raft proposal, after
    /// validating the request; the request is what dominates the proposal's size.
    fn check_size(&self, encoded_len: usize) -> Result<(), EtcdError> {
        if encoded_len > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    async fn read_range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let serializable = req.serializable;
        let (read, view) = convert::range_request(req)?;
        let historical = read.revision > 0;
        let resp = self.backend.range(read, serializable).await?;
        let info = self.backend.header();
        // A read of the current state reports exactly the revision it saw (clients watch from
        // the next one); a read at an older revision reports the current revision, as etcd does.
        let revision = if historical {
            info.revision.max(resp.revision)
        } else {
            resp.revision
        };
        Ok(view.apply(resp, convert::header(&info, revision)))
    }

    async fn write_key(&self, req: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        let size = req.encoded_len();
        let txn = convert::single_op_txn(convert::put_op(req)?);
        self.check_size(size)?;
        let resp = self.backend.txn(txn).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        convert::put_response(convert::single_response(resp)?, header)
    }

    async fn delete_keys(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, EtcdError> {
        let size = req.encoded_len();
        let txn = convert::single_op_txn(convert::delete_op(req)?);
        self.check_size(size)?;
        let resp = self.backend.txn(txn).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        convert::delete_response(convert::single_response(resp)?, header)
    }

    async fn run_txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        let size = req.encoded_len();
        let (txn, plan) = convert::txn_request(req, self.limits.max_txn_ops)?;
        self.check_size(size)?;
        let resp = self.backend.txn(txn).await?;
        let header = convert::header(&self.backend.header(), resp.revision);
        plan.response(resp, header)
    }

    async fn compact_history(
        &self,
        req: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, EtcdError> {
        // `physical` is accepted: the compaction target is recorded through raft before this
        // returns, so history below it is already unreadable; deletion continues in the
        // background either way.
        self.backend.compact(req.revision).await?;
        let info = self.backend.header();
        Ok(pb::CompactionResponse {
            header: Some(convert::header(&info, info.revision)),
        })
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
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.range",
            key = %req.key.escape_ascii(),
            range_end = %req.range_end.escape_ascii(),
            revision = req.revision,
            serializable = req.serializable,
        );
        serve(span, self.read_range(req)).await
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("etcd.put", key = %req.key.escape_ascii(), value_len = req.value.len());
        serve(span, self.write_key(req)).await
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
        serve(span, self.delete_keys(req)).await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.txn",
            compares = req.compare.len(),
            success = req.success.len(),
            failure = req.failure.len(),
        );
        serve(span, self.run_txn(req)).await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "etcd.compact",
            revision = req.revision,
            physical = req.physical
        );
        serve(span, self.compact_history(req)).await
    }
}

#[cfg(test)]
mod tests {
    use skiff_proto::etcdserverpb::request_op::Request as OpRequest;

    use super::*;
    use crate::etcd::test_backend::StoreBackend;

    fn service(limits: EtcdLimits) -> KvService<StoreBackend> {
        KvService::new(StoreBackend::open(), limits)
    }

    fn put_req(key: &str, value: Vec<u8>) -> pb::PutRequest {
        pb::PutRequest {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn size_is_checked_after_etcds_validation() {
        let kv = service(EtcdLimits {
            max_request_bytes: 1024,
            max_txn_ops: 2,
        });
        let big = vec![b'x'; 2048];
        assert_eq!(
            kv.write_key(put_req("k", big.clone())).await.err(),
            Some(EtcdError::RequestTooLarge)
        );
        assert_eq!(
            kv.write_key(put_req("", big.clone())).await.err(),
            Some(EtcdError::EmptyKey)
        );
        let op = |i: usize| pb::RequestOp {
            request: Some(OpRequest::RequestPut(put_req(
                &format!("k{i}"),
                big.clone(),
            ))),
        };
        let too_many = pb::TxnRequest {
            success: (0..3).map(op).collect(),
            ..Default::default()
        };
        assert_eq!(
            kv.run_txn(too_many).await.err(),
            Some(EtcdError::TooManyOps)
        );
        let too_big = pb::TxnRequest {
            success: (0..2).map(op).collect(),
            ..Default::default()
        };
        assert_eq!(
            kv.run_txn(too_big).await.err(),
            Some(EtcdError::RequestTooLarge)
        );
        assert!(kv.write_key(put_req("k", vec![b'x'; 512])).await.is_ok());
    }

    #[tokio::test]
    async fn headers_carry_the_write_and_read_revisions() {
        let kv = service(EtcdLimits::default());
        let first = kv
            .write_key(put_req("k", b"1".to_vec()))
            .await
            .expect("put");
        let r1 = first.header.expect("header").revision;
        let second = kv
            .write_key(pb::PutRequest {
                prev_kv: true,
                ..put_req("k", b"2".to_vec())
            })
            .await
            .expect("put");
        let r2 = second.header.expect("header").revision;
        assert_eq!(r2, r1 + 1);
        assert_eq!(second.prev_kv.map(|kv| kv.value), Some(b"1".to_vec()));

        let now = kv
            .read_range(pb::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .expect("get");
        assert_eq!(now.header.map(|h| h.revision), Some(r2));
        let old = kv
            .read_range(pb::RangeRequest {
                key: b"k".to_vec(),
                revision: r1,
                ..Default::default()
            })
            .await
            .expect("get");
        assert_eq!(old.kvs[0].value, b"1".to_vec());
        assert_eq!(
            old.header.map(|h| h.revision),
            Some(r2),
            "etcd reports the current revision"
        );

        let deleted = kv
            .delete_keys(pb::DeleteRangeRequest {
                key: b"k".to_vec(),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .expect("delete");
        assert_eq!(
            (deleted.deleted, deleted.header.map(|h| h.revision)),
            (1, Some(r2 + 1))
        );

        kv.compact_history(pb::CompactionRequest {
            revision: r2,
            physical: true,
        })
        .await
        .expect("compact");
        let gone = kv
            .read_range(pb::RangeRequest {
                key: b"k".to_vec(),
                revision: r1,
                ..Default::default()
            })
            .await;
        let status = Status::from(gone.expect_err("compacted"));
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
