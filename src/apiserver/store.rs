//! The generic object store: Kubernetes objects as JSON values under etcd-style keys, written
//! only through raft transactions (create-if-absent, update-if-revision-matches), read with
//! read index unless the client accepts any revision.
//!
//! `metadata.resourceVersion` is never stored: it is the key's mod revision, set on the way
//! out, exactly as kube-apiserver's etcd3 store does.

use serde_json::Value;
use skiff_raft::RaftNode;
use skiff_storage::{
    Compare, CompareOp, CompareTarget, KeyRange, KeyValue, Op, OpResponse, RangeRequest, Revision,
    TxnRequest,
};

use super::at_rest;
use super::status::ApiError;
use crate::registry::KindInfo;

/// An object read from the store with the revision it was last modified at.
#[derive(Clone, Debug)]
pub struct Stored {
    pub object: Value,
    pub mod_revision: Revision,
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Stored>,
    /// The store revision the list was read at.
    pub revision: Revision,
    /// The first key of the next page, when more remain.
    pub next_key: Option<Vec<u8>>,
}

/// Why a create did not happen.
pub enum CreateOutcome {
    Created(Revision),
    AlreadyExists,
    NamespaceMissing,
    /// A unique claim (see `Claims`) is held by another object.
    ClaimTaken(String),
    /// Something the write was guarded on changed since it was read (a quota it charges):
    /// read again and retry.
    LostRace,
}

/// Unique values an object holds (a Service's cluster IP, its node ports), each a key under
/// `/registry/claims/` written and released in the same transaction as the object, so two
/// objects can never hold the same value.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Keys that must be free and are taken by this write.
    pub take: Vec<String>,
    /// Keys this write gives up.
    pub release: Vec<String>,
    /// Other objects rewritten by this write, each only if unchanged since it was read.
    pub guarded: Vec<GuardedPut>,
}

/// Another object rewritten in the same transaction as a write, only if it is still at the
/// revision it was read at: a ResourceQuota whose usage the write charges.
#[derive(Clone, Debug)]
pub struct GuardedPut {
    key: String,
    expected: Revision,
    value: Vec<u8>,
}

impl GuardedPut {
    pub fn new(key: String, expected: Revision, object: &Value) -> Result<Self, ApiError> {
        let value = encode(&key, object)?;
        Ok(GuardedPut {
            key,
            expected,
            value,
        })
    }
}

impl Claims {
    fn compares(&self) -> impl Iterator<Item = Compare> + '_ {
        self.take.iter().map(|k| key_exists(k, false)).chain(
            self.guarded
                .iter()
                .map(|g| Compare::mod_revision_equals(g.key.as_str(), g.expected)),
        )
    }

    fn ops(&self, owner: &str) -> impl Iterator<Item = Op> + '_ {
        let owner = owner.as_bytes().to_vec();
        self.take
            .iter()
            .map(move |k| Op::Put {
                key: k.as_bytes().to_vec(),
                value: owner.clone(),
                lease: 0,
                prev_kv: false,
            })
            .chain(self.release.iter().map(|k| Op::Delete {
                range: KeyRange::single(k.as_str()),
                prev_kv: false,
            }))
            .chain(self.guarded.iter().map(|g| put(&g.key, g.value.clone())))
    }
}

/// What a guarded update did.
pub enum UpdateOutcome {
    Written(Revision),
    /// The object changed since it was read.
    LostRace,
    ClaimTaken(String),
}

/// The key of one object: `<prefix>[<namespace>/]<name>`.
pub fn object_key(info: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("{}{ns}/{name}", info.key_prefix()),
        _ => format!("{}{name}", info.key_prefix()),
    }
}

/// The prefix of a list: the kind, or the kind in one namespace.
pub fn list_prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("{}{ns}/", info.key_prefix()),
        _ => info.key_prefix(),
    }
}

pub fn namespace_key(namespace: &str) -> String {
    format!("/registry/namespaces/{namespace}")
}

/// Decodes a stored value (opening it if it is encrypted at rest) and stamps its
/// resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Stored, ApiError> {
    let plain = at_rest::from_storage(&kv.key, &kv.value).map_err(|e| {
        ApiError::Internal(format!(
            "stored object {}: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    let mut object: Value = serde_json::from_slice(&plain).map_err(|e| {
        ApiError::Internal(format!(
            "stored object {} does not decode: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(Stored {
        object,
        mod_revision: kv.mod_revision,
    })
}

pub fn set_resource_version(object: &mut Value, revision: Revision) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// The bytes stored for an object under `key`: its JSON without resourceVersion, sealed if
/// the key is encrypted at rest.
fn encode(key: &str, object: &Value) -> Result<Vec<u8>, ApiError> {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let json = serde_json::to_vec(&object).map_err(|e| ApiError::Internal(e.to_string()))?;
    at_rest::to_storage(key, json).map_err(|e| ApiError::Internal(format!("{key}: {e}")))
}

fn key_exists(key: &str, exists: bool) -> Compare {
    Compare {
        range: KeyRange::single(key),
        op: if exists {
            CompareOp::Greater
        } else {
            CompareOp::Equal
        },
        target: CompareTarget::CreateRevision(0),
    }
}

fn put(key: &str, value: Vec<u8>) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value,
        lease: 0,
        prev_kv: false,
    }
}

fn range_op(key: &str) -> Op {
    Op::Range(RangeRequest {
        range: KeyRange::single(key),
        count_only: true,
        ..Default::default()
    })
}

#[derive(Clone)]
pub struct ObjectStore {
    node: RaftNode,
}

impl ObjectStore {
    pub fn new(node: RaftNode) -> Self {
        ObjectStore { node }
    }

    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// One object; `linearizable` = read index first (the default for gets).
    pub async fn get(&self, key: &str, linearizable: bool) -> Result<Option<Stored>, ApiError> {
        let response = self
            .node
            .range(
                &RangeRequest {
                    range: KeyRange::single(key),
                    ..Default::default()
                },
                !linearizable,
            )
            .await?;
        response.kvs.first().map(decode).transpose()
    }

    /// Up to `limit` objects (0 = all) under `prefix`, from `start` (a continue key) on, at
    /// `revision` (0 = now).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<Vec<u8>>,
        limit: i64,
        revision: Revision,
        linearizable: bool,
    ) -> Result<ListPage, ApiError> {
        let mut range = KeyRange::prefix(prefix);
        if let Some(start) = start {
            range.key = start;
        }
        let response = self
            .node
            .range(
                &RangeRequest {
                    range,
                    limit,
                    revision,
                    ..Default::default()
                },
                !linearizable,
            )
            .await?;
        let next_key = if response.more {
            response.kvs.last().map(|kv| {
                let mut next = kv.key.clone();
                next.push(0);
                next
            })
        } else {
            None
        };
        let items = response
            .kvs
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let read_at = if revision > 0 {
            revision
        } else {
            response.revision
        };
        Ok(ListPage {
            items,
            revision: read_at,
            next_key,
        })
    }

    /// Create-if-absent, and (for namespaced objects) only while the namespace exists — both
    /// checked inside one transaction, so a concurrent namespace delete cannot slip between.
    pub async fn create(
        &self,
        key: &str,
        object: &Value,
        namespace: Option<&str>,
    ) -> Result<CreateOutcome, ApiError> {
        self.create_claiming(key, object, namespace, &Claims::default())
            .await
    }

    /// `create`, taking `claims` in the same transaction.
    pub async fn create_claiming(
        &self,
        key: &str,
        object: &Value,
        namespace: Option<&str>,
        claims: &Claims,
    ) -> Result<CreateOutcome, ApiError> {
        let mut compares = vec![key_exists(key, false)];
        let mut failure = vec![range_op(key)];
        if let Some(ns) = namespace {
            let ns_key = namespace_key(ns);
            compares.push(key_exists(&ns_key, true));
            failure.push(range_op(&ns_key));
        }
        compares.extend(claims.compares());
        let mut success = vec![put(key, encode(key, object)?)];
        success.extend(claims.ops(key));
        let response = self
            .node
            .txn(TxnRequest {
                compares,
                success,
                failure,
            })
            .await?;
        if response.succeeded {
            return Ok(CreateOutcome::Created(response.revision));
        }
        let count = |i: usize| match response.responses.get(i) {
            Some(OpResponse::Range(r)) => r.count,
            _ => 0,
        };
        if count(0) > 0 {
            return Ok(CreateOutcome::AlreadyExists);
        }
        if namespace.is_some() && count(1) == 0 {
            return Ok(CreateOutcome::NamespaceMissing);
        }
        match self.taken_claim(claims).await? {
            Some(claim) => Ok(CreateOutcome::ClaimTaken(claim)),
            // A guarded object changed, or something changed between the transaction and
            // this read: let the caller read again and retry.
            None => Ok(CreateOutcome::LostRace),
        }
    }

    /// The first of `claims.take` that another object holds.
    async fn taken_claim(&self, claims: &Claims) -> Result<Option<String>, ApiError> {
        for claim in &claims.take {
            let request = RangeRequest {
                range: KeyRange::single(claim.as_str()),
                count_only: true,
                ..Default::default()
            };
            if self.node.range(&request, false).await?.count > 0 {
                return Ok(Some(claim.clone()));
            }
        }
        Ok(None)
    }

    /// `update`, taking and releasing `claims` in the same transaction.
    pub async fn update_claiming(
        &self,
        key: &str,
        object: &Value,
        expected: Revision,
        claims: &Claims,
    ) -> Result<UpdateOutcome, ApiError> {
        let mut compares = vec![Compare::mod_revision_equals(key, expected)];
        compares.extend(claims.compares());
        let mut success = vec![put(key, encode(key, object)?)];
        success.extend(claims.ops(key));
        let response = self
            .node
            .txn(TxnRequest {
                compares,
                success,
                failure: Vec::new(),
            })
            .await?;
        if response.succeeded {
            return Ok(UpdateOutcome::Written(response.revision));
        }
        Ok(match self.taken_claim(claims).await? {
            Some(claim) => UpdateOutcome::ClaimTaken(claim),
            None => UpdateOutcome::LostRace,
        })
    }

    /// Writes `object` if the key is still at `expected` mod revision. `None` = lost the race.
    pub async fn update(
        &self,
        key: &str,
        object: &Value,
        expected: Revision,
    ) -> Result<Option<Revision>, ApiError> {
        let response = self
            .node
            .txn(TxnRequest {
                compares: vec![Compare::mod_revision_equals(key, expected)],
                success: vec![put(key, encode(key, object)?)],
                failure: Vec::new(),
            })
            .await?;
        Ok(response.succeeded.then_some(response.revision))
    }

    /// Deletes the key if still at `expected`, plus every key under `also` (a namespace's
    /// contents) and the claim keys in `release`, in one transaction. `None` = lost the race.
    pub async fn delete(
        &self,
        key: &str,
        expected: Revision,
        also: &[String],
        release: &[String],
    ) -> Result<Option<Revision>, ApiError> {
        let mut success = vec![Op::Delete {
            range: KeyRange::single(key),
            prev_kv: false,
        }];
        success.extend(release.iter().map(|k| Op::Delete {
            range: KeyRange::single(k.as_str()),
            prev_kv: false,
        }));
        success.extend(also.iter().map(|prefix| Op::Delete {
            range: KeyRange::prefix(prefix.as_str()),
            prev_kv: false,
        }));
        let response = self
            .node
            .txn(TxnRequest {
                compares: vec![Compare::mod_revision_equals(key, expected)],
                success,
                failure: Vec::new(),
            })
            .await?;
        Ok(response.succeeded.then_some(response.revision))
    }
}
