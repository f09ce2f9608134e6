//! The verbs on objects as an in-process API: get, list, create, update (whole object or the
//! status subresource), delete (preconditions, finalizers, propagation policy), deletecollection.
//!
//! The REST handlers and the in-process controllers both call this, so an object written by a
//! controller goes through the same admission, validation and optimistic concurrency as one
//! written by kubectl. Every write is one raft transaction guarded by the revision it read; a
//! lost race is retried when the caller gave no resourceVersion, and a 409 when it did.

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Value, json};

use super::admission;
use super::selector::{FieldSelector, LabelSelector};
use super::service_network::{self, ServiceNetwork, claim_changes, claims_of};
use super::status::{ApiError, MODIFIED};
use super::store::{CreateOutcome, ObjectStore, Stored, UpdateOutcome, list_prefix, object_key};
use crate::json_path::JsonPath;
use crate::registry::{self, AdmitError, Kind, KindInfo};

/// How often a write without a client precondition retries a lost race before giving up.
const MAX_RETRIES: usize = 16;

/// The finalizer `propagationPolicy=Foreground` puts on an owner until its dependents are gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer `propagationPolicy=Orphan` puts on an owner until its dependents are released.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Where an object lives: its kind and (for namespaced kinds) namespace.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub kind: &'static dyn Kind,
    pub namespace: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn new(kind: &'static dyn Kind, namespace: Option<&'a str>) -> Self {
        Scope {
            kind,
            namespace: namespace.filter(|_| kind.info().namespaced),
        }
    }

    fn key(&self, name: &str) -> String {
        object_key(self.kind.info(), self.namespace, name)
    }
}

/// What part of an object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything but status (the main resource).
    Main,
    /// Only status (the `/status` subresource).
    Status,
    /// `pods/binding`: the transform sets spec.nodeName, which a pod update may not change;
    /// type-checked only, like a status write.
    Binding,
    /// `namespaces/finalize`: the namespace controller drops spec.finalizers, which a namespace
    /// update may not change; type-checked only.
    Finalize,
}

/// A list request: selectors and paging.
#[derive(Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// 0 = no limit.
    pub limit: i64,
    pub continue_token: Option<String>,
    /// `resourceVersion=0`: any recent state will do (no read index).
    pub any_revision: bool,
}

impl ListOptions {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

/// How a write treats fields the kind's schema does not declare (`fieldValidation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    #[default]
    Ignore,
    /// Drop them (kube-apiserver also warns; we do not send warnings yet).
    Warn,
    /// Refuse the write with 400 naming them.
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Options of a create or update.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who makes the change, for `metadata.managedFields` (None: not tracked, e.g. a write
    /// whose transform records ownership itself, as server-side apply does).
    pub field_manager: Option<String>,
    /// The object as the caller last saw it (an informer's copy, with its resourceVersion):
    /// an update's first attempt writes on top of it instead of reading the store first, as
    /// Kubernetes' GuaranteedUpdate does with a cached existing object. The write is guarded
    /// by that resourceVersion, so a stale copy only loses the race; then (and when the copy
    /// fails the transform or admission, or makes the change a no-op) the store is read.
    pub cached: Option<std::sync::Arc<Value>>,
}

/// The 400 kube-apiserver's strict decoder gives for undeclared fields.
fn check_fields(
    kind: &dyn Kind,
    object: &Value,
    validation: FieldValidation,
) -> Result<(), ApiError> {
    if validation != FieldValidation::Strict {
        return Ok(());
    }
    let unknown = kind.unknown_fields(object);
    if unknown.is_empty() {
        return Ok(());
    }
    let info = kind.info();
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    Err(ApiError::BadRequest(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = info.kind,
        version = info.version,
    )))
}

/// metav1.DeleteOptions, the parts we honour.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// "Foreground", "Background" or "Orphan".
    pub propagation_policy: Option<String>,
    pub dry_run: bool,
    /// `gracePeriodSeconds`: for pods a kubelet runs, how long their containers get to stop
    /// (None: the pod's terminationGracePeriodSeconds; 0: at once).
    pub grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    /// Parses a DeleteOptions body (empty = defaults); `orphanDependents` maps to Orphan.
    pub fn from_body(body: &[u8]) -> Result<Self, ApiError> {
        if body.is_empty() {
            return Ok(Self::default());
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?;
        let text = |p: &str| v.at(p).and_then(Value::as_str).map(str::to_string);
        let mut policy = text("/propagationPolicy");
        if policy.is_none() && v.at("/orphanDependents") == Some(&Value::Bool(true)) {
            policy = Some("Orphan".into());
        }
        if let Some(p) = &policy
            && !matches!(p.as_str(), "Foreground" | "Background" | "Orphan")
        {
            return Err(ApiError::BadRequest(format!(
                "propagationPolicy {p:?} is not one of Foreground, Background, Orphan"
            )));
        }
        let dry_run = v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
        Ok(DeleteOptions {
            uid: text("/preconditions/uid"),
            resource_version: text("/preconditions/resourceVersion"),
            propagation_policy: policy,
            dry_run,
            grace_period_seconds: v.get("gracePeriodSeconds").and_then(Value::as_i64),
        })
    }
}

/// What a delete did.
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// Finalizers hold it: it now carries a deletionTimestamp and waits for them.
    Pending(Value),
}

impl Deleted {
    pub fn into_object(self) -> Value {
        match self {
            Deleted::Gone(v) | Deleted::Pending(v) => v,
        }
    }
}

/// The in-process API over the object store. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    store: ObjectStore,
    network: ServiceNetwork,
}

impl Objects {
    pub fn new(store: ObjectStore) -> Self {
        Objects {
            store,
            network: ServiceNetwork::default(),
        }
    }

    pub fn service_network(&self) -> &ServiceNetwork {
        &self.network
    }

    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    pub async fn get(
        &self,
        scope: Scope<'_>,
        name: &str,
        linearizable: bool,
    ) -> Result<Value, ApiError> {
        let info = scope.kind.info();
        self.store
            .get(&scope.key(name), linearizable)
            .await?
            .map(|s| s.object)
            .ok_or_else(|| ApiError::not_found(info, name))
    }

    /// Reads a whole (filtered) list or one page of it.
    pub async fn list(
        &self,
        scope: Scope<'_>,
        options: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let info = scope.kind.info();
        let (start, revision) = match &options.continue_token {
            Some(token) => {
                let (start, rv) = decode_continue(token)?;
                (Some(start), rv)
            }
            None => (None, 0),
        };
        let linearizable = revision == 0 && !options.any_revision;
        let prefix = list_prefix(info, scope.namespace);
        let page = self
            .store
            .list(&prefix, start, options.limit.max(0), revision, linearizable)
            .await?;
        let items = page
            .items
            .into_iter()
            .map(|s| s.object)
            .filter(|o| options.matches(o))
            .collect();
        Ok(ListResult {
            items,
            revision: page.revision,
            continue_token: page
                .next_key
                .map(|key| encode_continue(&key, page.revision)),
        })
    }

    /// Creates an object: server-set metadata, admission, then create-if-absent (and only while
    /// its namespace exists). Returns the stored object with its resourceVersion.
    pub async fn create(
        &self,
        scope: Scope<'_>,
        object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let options = WriteOptions {
            dry_run,
            ..WriteOptions::default()
        };
        self.create_with(scope, object, &options).await
    }

    /// `create` with field validation.
    pub async fn create_with(
        &self,
        scope: Scope<'_>,
        mut object: Value,
        options: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let dry_run = options.dry_run;
        let info = scope.kind.info();
        check_fields(scope.kind, &object, options.field_validation)?;
        check_type(info, &mut object)?;
        check_namespace(info, &mut object, scope.namespace)?;
        let meta = meta_mut(&mut object)?;
        let has_name = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            let name = format!("{prefix}{}", generated_suffix());
            meta.insert("name".into(), json!(name));
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(field);
        }
        if info.tracks_generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        let name = name_of(&object).to_string();
        if let Some(manager) = &options.field_manager {
            super::apply::record_update(&mut object, None, manager, &info.api_version());
        }
        self.check_namespace_active(scope, &name).await?;
        if let Some(namespace) = scope.namespace {
            admission::limit_ranges(self, info, &name, namespace, &mut object).await?;
        }
        let admitted = scope
            .kind
            .admit_create(object)
            .map_err(|e| admit_error(info, &name, e))?;
        if let Some(namespace) = scope.namespace {
            admission::service_account(self, info, &name, namespace, &admitted).await?;
        }
        // Values the client chose itself; anything else assign() picks may be re-picked.
        let chosen = claims_of(info, &admitted);
        for attempt in 0..MAX_RETRIES {
            let mut object = admitted.clone();
            self.network
                .assign(info, &self.store, &mut object, None)
                .await?;
            let mut claims = claim_changes(info, &object, None);
            if let Some(namespace) = scope.namespace {
                let linearizable = admission::read_linearizable(self, attempt);
                claims.guarded = admission::quota::charge(
                    self,
                    info,
                    &name,
                    namespace,
                    &object,
                    None,
                    linearizable,
                )
                .await?;
            }
            if dry_run {
                return Ok(object);
            }
            let key = scope.key(&name);
            match self
                .store
                .create_claiming(&key, &object, scope.namespace, &claims)
                .await?
            {
                CreateOutcome::Created(revision) => {
                    super::store::set_resource_version(&mut object, revision);
                    return Ok(object);
                }
                CreateOutcome::AlreadyExists => return Err(ApiError::already_exists(info, &name)),
                CreateOutcome::NamespaceMissing => {
                    return Err(ApiError::NotFound {
                        resource: "namespaces".into(),
                        name: scope.namespace.unwrap_or("").to_string(),
                    });
                }
                CreateOutcome::ClaimTaken(claim) if chosen.contains(&claim) => {
                    return Err(service_network::claim_taken(info, &name, &claim));
                }
                CreateOutcome::ClaimTaken(claim) => {
                    tracing::debug!(claim, "an assigned value was taken meanwhile; re-assigning");
                }
                CreateOutcome::LostRace => {
                    tracing::debug!(key, "a quota changed meanwhile; charging again");
                    lost_race_pause(attempt).await;
                }
            }
        }
        Err(ApiError::conflict(info, &name, MODIFIED))
    }

    /// The guaranteed-update loop (after kube's GuaranteedUpdate): read, transform, check the
    /// caller's resourceVersion, admit, write if unchanged since the read; retry a lost race.
    /// An update that leaves a deleting object without finalizers deletes it.
    pub async fn update(
        &self,
        scope: Scope<'_>,
        name: &str,
        part: Part,
        transform: &Transform<'_>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let options = WriteOptions {
            dry_run,
            ..WriteOptions::default()
        };
        self.update_with(scope, name, part, transform, &options)
            .await
    }

    /// `update` with field validation.
    pub async fn update_with(
        &self,
        scope: Scope<'_>,
        name: &str,
        part: Part,
        transform: &Transform<'_>,
        options: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let info = scope.kind.info();
        let key = scope.key(name);
        let mut cached = options.cached.as_deref().and_then(|object| {
            let revision = object
                .at("/metadata/resourceVersion")
                .and_then(Value::as_str)?
                .parse()
                .ok()?;
            Some(Stored {
                object: object.clone(),
                mod_revision: revision,
            })
        });
        for attempt in 0..MAX_RETRIES {
            let guessed = cached.is_some();
            let stored = match cached.take() {
                Some(stored) => stored,
                None => self
                    .store
                    .get(&key, true)
                    .await?
                    .ok_or_else(|| ApiError::not_found(info, name))?,
            };
            let attempt = UpdateAttempt {
                scope,
                name,
                part,
                options,
                attempt,
                guessed,
            };
            match self.update_once(&attempt, transform, stored).await {
                Ok(Some(written)) => return Ok(written),
                // The cached copy was stale or unusable: read the store, without a pause.
                Ok(None) | Err(_) if guessed => {}
                Ok(None) => {
                    // The next read answers a client's resourceVersion with 409 if the object
                    // moved on; a race lost only on a charged quota is simply retried.
                    tracing::debug!(key, "lost an update race; retrying");
                    lost_race_pause(attempt.attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(info, name, MODIFIED))
    }

    /// One attempt of `update_with` on top of `stored`: the written object, or None when the
    /// race was lost (or a cached copy could not be trusted).
    async fn update_once(
        &self,
        attempt: &UpdateAttempt<'_>,
        transform: &Transform<'_>,
        stored: Stored,
    ) -> Result<Option<Value>, ApiError> {
        let UpdateAttempt {
            scope,
            name,
            part,
            options,
            attempt,
            guessed,
        } = *attempt;
        let Stored {
            object: current,
            mod_revision,
        } = stored;
        let dry_run = options.dry_run;
        let info = scope.kind.info();
        let key = scope.key(name);
        let mut new = transform(&current)?;
        check_fields(scope.kind, &new, options.field_validation)?;
        check_type(info, &mut new)?;
        check_namespace(info, &mut new, scope.namespace)?;
        if name_of(&new) != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        let client_rv = new
            .at("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        if client_rv
            .as_deref()
            .is_some_and(|rv| rv != mod_revision.to_string())
        {
            return Err(ApiError::conflict(info, name, MODIFIED));
        }
        if part == Part::Status {
            // Status writers change status only; everything else stays as stored.
            let status = new.get("status").cloned();
            new = current.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(obj) = new.as_object_mut() {
                        obj.remove("status");
                    }
                }
            }
        }
        // Fields the server owns are carried over from the stored object.
        let meta = meta_mut(&mut new)?;
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match current.at(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("resourceVersion".into(), json!(mod_revision.to_string()));
        if let Some(manager) = &options.field_manager {
            super::apply::record_update(&mut new, Some(&current), manager, &info.api_version());
        }
        let admitted = match part {
            Part::Main => scope.kind.admit_update(new, &current),
            Part::Status | Part::Binding | Part::Finalize => {
                scope.kind.admit_status_update(new, &current)
            }
        };
        let mut new = admitted.map_err(|e| admit_error(info, name, e))?;
        self.network
            .assign(info, &self.store, &mut new, Some(&current))
            .await?;
        if info.tracks_generation && new.get("spec") != current.get("spec") {
            let generation = current
                .at("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new)?.insert("generation".into(), json!(generation + 1));
        }
        // A no-op against a cached copy proves nothing: read the store and look again.
        if guessed && new == current && !dry_run {
            return Ok(None);
        }
        // A no-op update writes nothing and keeps the resourceVersion (as kube does).
        if new == current || dry_run {
            return Ok(Some(new));
        }
        // A namespace is also held by spec.finalizers until the namespace controller is done.
        let finished = is_deleting(&new)
            && finalizers(&new).is_empty()
            && (info.kind != "Namespace" || strings_at(&new, "/spec/finalizers").is_empty());
        let written = if finished {
            let release = claims_of(info, &current);
            match self.store.delete(&key, mod_revision, &[], &release).await? {
                Some(revision) => UpdateOutcome::Written(revision),
                None => UpdateOutcome::LostRace,
            }
        } else {
            let mut claims = claim_changes(info, &new, Some(&current));
            if let (Part::Main, Some(namespace)) = (part, scope.namespace) {
                let linearizable = admission::read_linearizable(self, attempt);
                claims.guarded = admission::quota::charge(
                    self,
                    info,
                    name,
                    namespace,
                    &new,
                    Some(&current),
                    linearizable,
                )
                .await?;
            }
            self.store
                .update_claiming(&key, &new, mod_revision, &claims)
                .await?
        };
        match written {
            UpdateOutcome::Written(revision) => {
                super::store::set_resource_version(&mut new, revision);
                Ok(Some(new))
            }
            UpdateOutcome::ClaimTaken(claim) => {
                Err(service_network::claim_taken(info, name, &claim))
            }
            UpdateOutcome::LostRace => Ok(None),
        }
    }

    /// Deletes an object. With finalizers (its own, or the one the propagation policy adds)
    /// it only gains a deletionTimestamp and is removed when the last finalizer goes.
    pub async fn delete(
        &self,
        scope: Scope<'_>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let info = scope.kind.info();
        let key = scope.key(name);
        // Deleting a namespace deletes what it holds in the same transaction, and gives up
        // the claims its Services held.
        let is_namespace = info.kind == "Namespace" && info.group.is_empty();
        let contents: Vec<String> = if is_namespace {
            registry::all_kinds()
                .iter()
                .map(|k| k.info())
                .filter(|i| i.namespaced)
                .map(|i| list_prefix(i, Some(name)))
                .collect()
        } else {
            Vec::new()
        };
        for _ in 0..MAX_RETRIES {
            let stored = self
                .store
                .get(&key, true)
                .await?
                .ok_or_else(|| ApiError::not_found(info, name))?;
            check_preconditions(info, name, &stored.object, options)?;
            // Deleting a CRD deletes its custom resources with it.
            let mut contents = contents.clone();
            if info.group == "apiextensions.k8s.io" && info.resource == "customresourcedefinitions"
            {
                let text = |p: &str| stored.object.at(p).and_then(Value::as_str).unwrap_or("");
                let (group, plural) = (text("/spec/group"), text("/spec/names/plural"));
                if !group.is_empty() && !plural.is_empty() {
                    contents.push(format!("/registry/{group}/{plural}/"));
                }
            }
            let mut object = stored.object.clone();
            let policy_finalizer = match options.propagation_policy.as_deref() {
                Some("Foreground") => Some(FOREGROUND_FINALIZER),
                Some("Orphan") => Some(ORPHAN_FINALIZER),
                _ => None,
            };
            let mut holding = finalizers(&object);
            if let Some(f) = policy_finalizer
                && !holding.iter().any(|h| h == f)
            {
                holding.push(f.to_string());
            }
            // A namespace with spec.finalizers ("kubernetes") terminates first: the namespace
            // controller empties it, drops the finalizer, and deletes it again.
            let terminating = is_namespace && !strings_at(&object, "/spec/finalizers").is_empty();
            if let Some(grace) = pod_grace_period(info, &object, options) {
                // A kubelet runs it: mark it, the kubelet stops its containers and then
                // deletes it for good (grace 0). A second delete may only shorten the wait.
                let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                let deadline = deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
                let meta = meta_mut(&mut object)?;
                let earlier = match meta.get("deletionTimestamp").and_then(Value::as_str) {
                    Some(current) => deadline.as_str() < current,
                    None => true,
                };
                if earlier {
                    meta.insert("deletionTimestamp".into(), json!(deadline));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                if !holding.is_empty() {
                    meta.insert("finalizers".into(), json!(holding));
                }
                meta.remove("resourceVersion");
                if object == stored.object || options.dry_run {
                    return Ok(Deleted::Pending(object));
                }
                if let Some(revision) = self
                    .store
                    .update(&key, &object, stored.mod_revision)
                    .await?
                {
                    super::store::set_resource_version(&mut object, revision);
                    return Ok(Deleted::Pending(object));
                }
                continue;
            }
            if holding.is_empty() && !terminating {
                if options.dry_run {
                    return Ok(Deleted::Gone(object));
                }
                let release = if is_namespace {
                    self.namespace_claims(name).await?
                } else {
                    claims_of(info, &object)
                };
                if self
                    .store
                    .delete(&key, stored.mod_revision, &contents, &release)
                    .await?
                    .is_some()
                {
                    return Ok(Deleted::Gone(object));
                }
                continue;
            }
            if terminating {
                object["status"]["phase"] = json!("Terminating");
            }
            let meta = meta_mut(&mut object)?;
            if holding.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), json!(holding));
            }
            if !meta.contains_key("deletionTimestamp") {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            meta.remove("resourceVersion");
            if object == stored.object || options.dry_run {
                return Ok(Deleted::Pending(object));
            }
            if let Some(revision) = self
                .store
                .update(&key, &object, stored.mod_revision)
                .await?
            {
                super::store::set_resource_version(&mut object, revision);
                return Ok(Deleted::Pending(object));
            }
        }
        Err(ApiError::conflict(info, name, MODIFIED))
    }

    /// NamespaceLifecycle admission: nothing new goes into a terminating namespace.
    async fn check_namespace_active(&self, scope: Scope<'_>, name: &str) -> Result<(), ApiError> {
        let Some(namespace) = scope.namespace else {
            return Ok(());
        };
        let Some(ns) = self
            .store
            .get(&super::store::namespace_key(namespace), false)
            .await?
        else {
            // A missing namespace is refused by the create transaction itself.
            return Ok(());
        };
        if is_deleting(&ns.object) {
            return Err(ApiError::Forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                scope.kind.info().qualified_resource(),
            )));
        }
        Ok(())
    }

    /// The claims every object in a namespace holds.
    async fn namespace_claims(&self, namespace: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for kind in registry::all_kinds()
            .iter()
            .filter(|k| service_network::holds_claims(k.info()))
        {
            let scope = Scope::new(*kind, Some(namespace));
            for item in self.list(scope, &ListOptions::default()).await?.items {
                out.extend(claims_of(kind.info(), &item));
            }
        }
        Ok(out)
    }

    /// Deletes every object of a list (deletecollection); returns what was deleted.
    pub async fn delete_collection(
        &self,
        scope: Scope<'_>,
        list: &ListOptions,
        options: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let items = self.list(scope, list).await?.items;
        let mut deleted = Vec::with_capacity(items.len());
        for item in items {
            let namespace = item.at("/metadata/namespace").and_then(Value::as_str);
            let item_scope = Scope::new(scope.kind, namespace.or(scope.namespace));
            match self.delete(item_scope, name_of(&item), options).await {
                Ok(d) => deleted.push(d.into_object()),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

/// An update's function from the current object to the desired one.
pub type Transform<'a> = dyn Fn(&Value) -> Result<Value, ApiError> + Send + Sync + 'a;

/// How long a deleted pod's containers get to stop, or None when the pod goes at once: it is
/// not bound, already finished, no kubelet has taken it (no status.hostIP: nobody would finish
/// the deletion), or the caller asked for grace 0.
fn pod_grace_period(info: &KindInfo, pod: &Value, options: &DeleteOptions) -> Option<i64> {
    if info.kind != "Pod" || !info.group.is_empty() || options.grace_period_seconds == Some(0) {
        return None;
    }
    let text = |p: &str| pod.at(p).and_then(Value::as_str).unwrap_or("");
    if text("/spec/nodeName").is_empty()
        || text("/status/hostIP").is_empty()
        || matches!(text("/status/phase"), "Succeeded" | "Failed")
    {
        return None;
    }
    let grace = options.grace_period_seconds.unwrap_or_else(|| {
        pod.at("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    // Kubernetes turns a negative grace into 1 second.
    Some(grace.max(1))
}

/// A short random pause before retrying a lost race on a shared object (a quota many creates
/// charge), so the racers spread out instead of colliding again.
/// What one attempt of `Objects::update_with` works with besides the transform.
#[derive(Clone, Copy)]
struct UpdateAttempt<'a> {
    scope: Scope<'a>,
    name: &'a str,
    part: Part,
    options: &'a WriteOptions,
    /// Retries so far (quota reads turn linearizable after the first).
    attempt: usize,
    /// Working on the caller's cached copy rather than a fresh read.
    guessed: bool,
}

async fn lost_race_pause(attempt: usize) {
    let ceiling = 2u64 << attempt.min(6);
    let pause = rand::rng().random_range(0..ceiling);
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}

pub fn is_deleting(object: &Value) -> bool {
    object.at("/metadata/deletionTimestamp").is_some()
}

pub fn finalizers(object: &Value) -> Vec<String> {
    strings_at(object, "/metadata/finalizers")
}

/// The string at `pointer` ("" when absent or not a string).
pub fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.at(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The strings of the list at `pointer` (empty when absent).
pub fn strings_at(object: &Value, pointer: &str) -> Vec<String> {
    object
        .at(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn check_preconditions(
    info: &KindInfo,
    name: &str,
    object: &Value,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    for (field, label, want) in [
        ("uid", "UID", &options.uid),
        (
            "resourceVersion",
            "ResourceVersion",
            &options.resource_version,
        ),
    ] {
        let have = object
            .at(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(want) = want
            && want != have
        {
            return Err(ApiError::conflict(
                info,
                name,
                format!(
                    "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                ),
            ));
        }
    }
    Ok(())
}

fn admit_error(info: &KindInfo, name: &str, e: AdmitError) -> ApiError {
    match e {
        AdmitError::Decode(msg) => ApiError::BadRequest(msg),
        AdmitError::Invalid(errors) => ApiError::invalid(info, name, errors),
    }
}

pub fn name_of(object: &Value) -> &str {
    object
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// apiVersion/kind must be absent or name this kind; they are set when absent.
fn check_type(info: &KindInfo, object: &mut Value) -> Result<(), ApiError> {
    let api_version = info.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", info.kind)] {
        match object.get(field).and_then(Value::as_str) {
            None | Some("") => object[field] = json!(want),
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}) does not match the expected API version ({api_version}) or kind {got} is not {}",
                    object
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    info.kind
                )));
            }
        }
    }
    Ok(())
}

/// The namespace in the body must be empty or match the URL's; it is set from the URL.
fn check_namespace(
    info: &KindInfo,
    object: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    let meta = meta_mut(object)?;
    if !info.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let url_ns = namespace.ok_or_else(|| {
        ApiError::BadRequest("the namespace of the object is required in the URL".into())
    })?;
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
        Some(ns) if ns == url_ns => Ok(()),
        Some(_) => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
}

pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// apiserver's SimpleNameGenerator: 5 characters from an alphabet without vowels.
pub fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Continue tokens: the next key and the revision of the first page, base64 JSON.
fn encode_continue(key: &[u8], revision: i64) -> String {
    let token =
        json!({"rv": revision, "start": base64::engine::general_purpose::STANDARD.encode(key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(Vec<u8>, i64), ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(bad)?;
    Ok((start, rv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(b"/registry/configmaps/default/b\0", 42);
        assert_eq!(
            decode_continue(&token).expect("token"),
            (b"/registry/configmaps/default/b\0".to_vec(), 42)
        );
        assert!(decode_continue("garbage!").is_err());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }

    #[test]
    fn delete_options_parse_policy_and_preconditions() {
        let o = DeleteOptions::from_body(
            br#"{"propagationPolicy":"Foreground","preconditions":{"uid":"u"},"dryRun":["All"]}"#,
        )
        .expect("options");
        assert_eq!(o.propagation_policy.as_deref(), Some("Foreground"));
        assert_eq!(o.uid.as_deref(), Some("u"));
        assert!(o.dry_run);
        let orphan = DeleteOptions::from_body(br#"{"orphanDependents":true}"#).expect("options");
        assert_eq!(orphan.propagation_policy.as_deref(), Some("Orphan"));
        assert!(DeleteOptions::from_body(br#"{"propagationPolicy":"Sideways"}"#).is_err());
    }
}
