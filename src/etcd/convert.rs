//! Translation between the etcd wire types (`etcdserverpb`, `mvccpb`) and the store's model
//! (`skiff_storage`), with etcd's request validation on the way in.
//!
//! The store reads keys in ascending order and knows nothing of sorting or of the mod/create
//! revision filters: like etcd's applier, the API layer reads everything the request could need
//! (`RangeView::needs_full_read`), then filters, sorts and applies the limit (`RangeView::apply`).

use std::cmp::Ordering;
use std::collections::HashSet;

use skiff_proto::etcdserverpb as pb;
use skiff_proto::etcdserverpb::compare::{CompareResult, TargetUnion};
use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use skiff_proto::etcdserverpb::request_op::Request;
use skiff_proto::etcdserverpb::response_op::Response;
use skiff_proto::mvccpb;
use skiff_storage::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, Op, OpResponse,
    RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse,
};

use super::backend::BackendError;
use super::backend::{HeaderInfo, MemberInfo, MemberStatus};
use super::error::EtcdError;

pub fn header(info: &HeaderInfo, revision: Revision) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: info.cluster_id,
        member_id: info.member_id,
        revision,
        raft_term: info.raft_term,
    }
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn event(ev: Event) -> mvccpb::Event {
    let kind = match ev.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(ev.kv)),
        prev_kv: ev.prev_kv.map(key_value),
    }
}

pub fn member(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_urls,
        client_urls: m.client_urls,
        is_learner: m.is_learner,
    }
}

pub fn status(s: MemberStatus) -> pb::StatusResponse {
    pb::StatusResponse {
        header: Some(header(&s.header, s.header.revision)),
        version: s.version,
        db_size: s.db_size,
        leader: s.leader,
        raft_index: s.raft_index,
        raft_term: s.raft_term,
        raft_applied_index: s.raft_applied_index,
        errors: Vec::new(),
        db_size_in_use: s.db_size,
        is_learner: s.is_learner,
    }
}

fn key_range(key: Vec<u8>, range_end: Vec<u8>) -> KeyRange {
    KeyRange { key, range_end }
}

// ---------------------------------------------------------------------------------------------
// Range

/// What happens to a store read before it goes back to the client (etcd's applier Range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeView {
    /// `None` when the store's ascending key order is already the requested order.
    sort: Option<(SortTarget, SortOrder)>,
    limit: i64,
    keys_only: bool,
    min_mod_revision: Revision,
    max_mod_revision: Revision,
    min_create_revision: Revision,
    max_create_revision: Revision,
}

impl RangeView {
    fn filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// Sorting and filtering need every key of the range, so the limit is applied here instead.
    fn needs_full_read(&self) -> bool {
        self.sort.is_some() || self.filters()
    }

    /// Filter, sort, limit and strip values, as etcd does after its read.
    pub fn apply(&self, read: RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
        let mut kvs = read.kvs;
        if self.filters() {
            kvs.retain(|kv| {
                (self.max_mod_revision == 0 || kv.mod_revision <= self.max_mod_revision)
                    && (self.min_mod_revision == 0 || kv.mod_revision >= self.min_mod_revision)
                    && (self.max_create_revision == 0
                        || kv.create_revision <= self.max_create_revision)
                    && (self.min_create_revision == 0
                        || kv.create_revision >= self.min_create_revision)
            });
        }
        if let Some((target, order)) = self.sort {
            // Stable, so keys with an equal sort value keep their ascending key order.
            kvs.sort_by(|a, b| {
                let ord = compare_by(target, a, b);
                if order == SortOrder::Descend {
                    ord.reverse()
                } else {
                    ord
                }
            });
        }
        let mut more = read.more;
        let limit = usize::try_from(self.limit).unwrap_or(0);
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        pb::RangeResponse {
            header: Some(header),
            kvs: kvs
                .into_iter()
                .map(|mut kv| {
                    if self.keys_only {
                        kv.value.clear();
                    }
                    key_value(kv)
                })
                .collect(),
            more,
            count: read.count,
        }
    }
}

fn compare_by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// Validates an etcd range request and splits it into the store read and the post-processing.
pub fn range_request(req: pb::RangeRequest) -> Result<(RangeRequest, RangeView), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    let order = SortOrder::try_from(req.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
    // etcd sorts ascending by default when a target other than the key is named.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let sort = match (order, target) {
        // The store already returns keys in ascending order.
        (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => None,
        (order, target) => Some((target, order)),
    };
    let view = RangeView {
        sort,
        limit: req.limit.max(0),
        keys_only: req.keys_only,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    };
    let read = RangeRequest {
        range: key_range(req.key, req.range_end),
        limit: if view.needs_full_read() {
            0
        } else {
            view.limit
        },
        // etcd reads the current revision for any revision <= 0.
        revision: req.revision.max(0),
        // Sorting by value needs the values even when the client does not want them.
        keys_only: req.keys_only && !matches!(view.sort, Some((SortTarget::Value, _))),
        count_only: req.count_only,
    };
    Ok((read, view))
}

// ---------------------------------------------------------------------------------------------
// Put and DeleteRange

pub fn put_op(req: pb::PutRequest) -> Result<Op, EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    if req.ignore_value {
        return Err(EtcdError::Unsupported("ignore_value"));
    }
    if req.ignore_lease {
        return Err(EtcdError::Unsupported("ignore_lease"));
    }
    if req.lease != 0 {
        return Err(EtcdError::LeasesUnsupported);
    }
    Ok(Op::Put {
        key: req.key,
        value: req.value,
        lease: 0,
        prev_kv: req.prev_kv,
    })
}

pub fn delete_op(req: pb::DeleteRangeRequest) -> Result<Op, EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(Op::Delete {
        range: key_range(req.key, req.range_end),
        prev_kv: req.prev_kv,
    })
}

/// A single write as a one-op transaction.
pub fn single_op_txn(op: Op) -> TxnRequest {
    TxnRequest {
        compares: Vec::new(),
        success: vec![op],
        failure: Vec::new(),
    }
}

/// The one response of a one-op transaction.
pub fn single_response(resp: TxnResponse) -> Result<OpResponse, EtcdError> {
    resp.responses.into_iter().next().ok_or_else(|| {
        EtcdError::Backend(BackendError::Internal(
            "transaction returned no response".into(),
        ))
    })
}

pub fn put_response(
    resp: OpResponse,
    header: pb::ResponseHeader,
) -> Result<pb::PutResponse, EtcdError> {
    match resp {
        OpResponse::Put { prev_kv } => Ok(pb::PutResponse {
            header: Some(header),
            prev_kv: prev_kv.map(key_value),
        }),
        other => Err(mismatched("put", &other)),
    }
}

pub fn delete_response(
    resp: OpResponse,
    header: pb::ResponseHeader,
) -> Result<pb::DeleteRangeResponse, EtcdError> {
    match resp {
        OpResponse::Delete { deleted, prev_kvs } => Ok(pb::DeleteRangeResponse {
            header: Some(header),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
        }),
        other => Err(mismatched("delete", &other)),
    }
}

fn mismatched(expected: &str, got: &OpResponse) -> EtcdError {
    EtcdError::Backend(BackendError::Internal(format!(
        "store answered a {expected} op with {got:?}"
    )))
}

// ---------------------------------------------------------------------------------------------
// Txn

/// For a validated transaction: per op, what kind of answer to expect from the store and how
/// to present a range result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPlan {
    success: Vec<OpShape>,
    failure: Vec<OpShape>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum OpShape {
    Range(RangeView),
    Put,
    Delete,
}

/// Validates a transaction in etcd's order (op count, compare keys, ops, then overlapping writes
/// within each branch) and converts it into the store request and the plan for its response.
pub fn txn_request(
    req: pb::TxnRequest,
    max_txn_ops: usize,
) -> Result<(TxnRequest, TxnPlan), EtcdError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    let compares = req
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let (success, success_shapes) = branch(req.success)?;
    let (failure, failure_shapes) = branch(req.failure)?;
    check_overlapping_writes(&success)?;
    check_overlapping_writes(&failure)?;
    let plan = TxnPlan {
        success: success_shapes,
        failure: failure_shapes,
    };
    Ok((
        TxnRequest {
            compares,
            success,
            failure,
        },
        plan,
    ))
}

type Branch = (Vec<Op>, Vec<OpShape>);

fn branch(ops: Vec<pb::RequestOp>) -> Result<Branch, EtcdError> {
    let mut converted = Vec::with_capacity(ops.len());
    let mut shapes = Vec::with_capacity(ops.len());
    for op in ops {
        let (op, shape) = match op.request {
            Some(Request::RequestRange(r)) => {
                let (read, view) = range_request(r)?;
                (Op::Range(read), OpShape::Range(view))
            }
            Some(Request::RequestPut(p)) => (put_op(p)?, OpShape::Put),
            Some(Request::RequestDeleteRange(d)) => (delete_op(d)?, OpShape::Delete),
            Some(Request::RequestTxn(_)) => return Err(EtcdError::Unsupported("nested txn")),
            None => return Err(EtcdError::EmptyRequestOp),
        };
        converted.push(op);
        shapes.push(shape);
    }
    Ok((converted, shapes))
}

fn compare(c: pb::Compare) -> Result<Compare, EtcdError> {
    if c.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => return Err(EtcdError::InvalidEnum("compare result")),
    };
    // Like etcd, `target` picks the field; an unset or different union member reads as zero.
    use pb::compare::CompareTarget as Target;
    let union = c.target_union;
    let int = |pick: fn(&TargetUnion) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match Target::try_from(c.target) {
        Ok(Target::Version) => CompareTarget::Version(int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Create) => CompareTarget::CreateRevision(int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Mod) => CompareTarget::ModRevision(int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Lease) => CompareTarget::Lease(int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(Target::Value) => CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => return Err(EtcdError::InvalidEnum("compare target")),
    };
    Ok(Compare {
        range: key_range(c.key, c.range_end),
        op,
        target,
    })
}

/// etcd refuses a branch that writes one key twice (two puts, or a put inside a deleted range):
/// the outcome would depend on op order, which etcd does not promise.
fn check_overlapping_writes(ops: &[Op]) -> Result<(), EtcdError> {
    let deletes: Vec<&KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { range, .. } => Some(range),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Op::Put { key, .. } = op else { continue };
        if !puts.insert(key.as_slice()) || deletes.iter().any(|range| range.contains(key)) {
            return Err(EtcdError::DuplicateKey);
        }
    }
    Ok(())
}

impl TxnPlan {
    /// The etcd response for the store's answer: range results of the branch that ran get their
    /// sort/filter/limit treatment; every inner response carries the outer header.
    pub fn response(
        &self,
        resp: TxnResponse,
        header: pb::ResponseHeader,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let shapes = if resp.succeeded {
            &self.success
        } else {
            &self.failure
        };
        if shapes.len() != resp.responses.len() {
            return Err(EtcdError::Backend(BackendError::Internal(format!(
                "store answered {} ops with {} responses",
                shapes.len(),
                resp.responses.len()
            ))));
        }
        let responses = resp
            .responses
            .into_iter()
            .zip(shapes)
            .map(|(op, shape)| {
                let response = match (op, shape) {
                    (OpResponse::Range(read), OpShape::Range(view)) => {
                        Response::ResponseRange(view.apply(read, header))
                    }
                    (op, OpShape::Put) => Response::ResponsePut(put_response(op, header)?),
                    (op, OpShape::Delete) => {
                        Response::ResponseDeleteRange(delete_response(op, header)?)
                    }
                    (op, OpShape::Range(_)) => return Err(mismatched("range", &op)),
                };
                Ok(pb::ResponseOp {
                    response: Some(response),
                })
            })
            .collect::<Result<Vec<_>, EtcdError>>()?;
        Ok(pb::TxnResponse {
            header: Some(header),
            succeeded: resp.succeeded,
            responses,
        })
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
