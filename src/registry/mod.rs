//! Per-kind rules of the Kubernetes API: what a kind is called and where it lives (`KindInfo`),
//! how a new or updated object is defaulted, prepared and validated, and how it prints as a
//! table row (`Strategy`). After Kubernetes' pkg/registry: one strategy per kind, one file per
//! kind, and the generic store in `crate::apiserver::store` does everything else.
//!
//! Adding a kind = one file here with a `Strategy` impl + one row in `KINDS`.
//!
//! Strategies are typed: they see the k8s-openapi struct of their kind, so decoding a request
//! body into it is the type check (wrong types are a 400, as kube-apiserver's decoder does) and
//! unknown fields are dropped on the way back to JSON (kube-apiserver prunes them too).

pub mod clusterrole;
pub mod clusterrolebinding;
pub mod configmap;
pub mod controllerrevision;
pub mod crd;
pub mod cronjob;
pub mod custom;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event;
pub mod fields;
pub mod horizontalpodautoscaler;
pub mod ingress;
pub mod ingressclass;
pub mod job;
pub mod lease;
pub mod limitrange;
pub mod namespace;
pub mod node;
pub mod persistentvolume;
pub mod persistentvolumeclaim;
pub mod pod;
pub mod pod_template;
pub mod poddisruptionbudget;
pub mod quantity;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourcequota;
pub mod role;
pub mod rolebinding;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod storageclass;

use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::Value;

use crate::json_path::JsonPath;
pub use fields::FieldErrors;

/// Identity and scope of one kind, as discovery serves it.
#[derive(Debug)]
pub struct KindInfo {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural resource name, as in URLs and RBAC.
    pub resource: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// `metadata.generation` counts spec changes.
    pub tracks_generation: bool,
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix for this kind: `/registry/<resource>/` (core) or
    /// `/registry/<group>/<resource>/`.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.resource)
        } else {
            format!("/registry/{}/{}/", self.group, self.resource)
        }
    }

    /// Resource name qualified by group, as Kubernetes error messages print it
    /// (`configmaps`, `deployments.apps`).
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// A table column as meta.k8s.io/v1 TableColumnDefinition describes it.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: &'static str,
    /// "string", "integer", "date", ...
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: u8,
}

impl Column {
    pub const fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Column {
            name,
            kind,
            format: "",
            description,
            priority: 0,
        }
    }

    pub const fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }

    pub const fn format(mut self, format: &'static str) -> Self {
        self.format = format;
        self
    }
}

pub const NAME_COLUMN: Column =
    Column::new("Name", "string", "Name must be unique within a namespace.").format("name");
pub const AGE_COLUMN: Column = Column::new(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// Per-kind behaviour, typed. Every hook has a default that does what most kinds want.
pub trait Strategy: Send + Sync + 'static {
    type Object: Serialize + DeserializeOwned + schemars::JsonSchema;

    fn info(&self) -> &'static KindInfo;

    /// Fills unset fields with their API defaults (create and update).
    fn default_fields(&self, _obj: &mut Self::Object) {}

    /// Clears what a client may not set on create (e.g. status).
    fn prepare_for_create(&self, _obj: &mut Self::Object) {}

    /// Carries over what a client may not change on update (e.g. status).
    fn prepare_for_update(&self, _new: &mut Self::Object, _old: &Self::Object) {}

    fn validate(&self, _obj: &Self::Object) -> FieldErrors {
        FieldErrors::default()
    }

    fn validate_update(&self, new: &Self::Object, _old: &Self::Object) -> FieldErrors {
        self.validate(new)
    }

    /// Columns between NAME and AGE (kube-apiserver's order), wide ones flagged.
    fn columns(&self) -> Vec<Column> {
        Vec::new()
    }

    /// Cells for `columns()`, given the current time for ages inside rows.
    fn cells(&self, _obj: &Self::Object, _now: jiff::Timestamp) -> Vec<Value> {
        Vec::new()
    }

    /// Whether the AGE column follows the kind columns (false when a kind places it itself).
    fn age_column(&self) -> bool {
        true
    }

    /// The NAME cell when a kind decorates it (StorageClass's ` (default)`); None = the name.
    fn name_cell(&self, _obj: &Self::Object) -> Option<String> {
        None
    }
}

/// Why admission refused an object.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The body does not decode into the kind's type.
    #[error("{0}")]
    Decode(String),
    #[error("invalid")]
    Invalid(FieldErrors),
}

/// The object-safe face of a `Strategy`, working on JSON. Implemented for every `Strategy`.
pub trait Kind: Send + Sync {
    fn info(&self) -> &'static KindInfo;
    fn admit_create(&self, obj: Value) -> Result<Value, AdmitError>;
    fn admit_update(&self, new: Value, old: &Value) -> Result<Value, AdmitError>;
    /// Paths in `obj` the kind's schema does not declare (`spec.foo`, `spec.ports[0].bar`):
    /// what `fieldValidation=Strict` rejects and the default prunes.
    fn unknown_fields(&self, obj: &Value) -> Vec<String>;
    /// A `/status` write: the caller already kept everything but status from `old`; this
    /// type-checks the result (and prunes unknown fields).
    fn admit_status_update(&self, new: Value, old: &Value) -> Result<Value, AdmitError>;
    /// The kind's OpenAPI v3 schema (a `$ref` into the generator's definitions for built-in
    /// kinds), for /openapi/v3 and so `kubectl explain`.
    fn openapi_schema(&self, generator: &mut schemars::SchemaGenerator) -> Value;
    /// All columns (NAME first, AGE where the kind puts it).
    fn table_columns(&self) -> Vec<Column>;
    /// One row's cells, matching `table_columns`.
    fn table_cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value>;
}

fn decode<T: DeserializeOwned>(info: &KindInfo, obj: &Value) -> Result<T, AdmitError> {
    T::deserialize(obj).map_err(|e| {
        AdmitError::Decode(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = info.kind,
            version = info.version
        ))
    })
}

fn encode<T: Serialize>(obj: &T) -> Result<Value, AdmitError> {
    serde_json::to_value(obj).map_err(|e| AdmitError::Decode(e.to_string()))
}

impl<S: Strategy> Kind for S {
    fn info(&self) -> &'static KindInfo {
        Strategy::info(self)
    }

    fn admit_create(&self, obj: Value) -> Result<Value, AdmitError> {
        let mut typed: S::Object = decode(self.info(), &obj)?;
        self.prepare_for_create(&mut typed);
        self.default_fields(&mut typed);
        let errors = self.validate(&typed);
        if !errors.is_empty() {
            return Err(AdmitError::Invalid(errors));
        }
        encode(&typed)
    }

    fn admit_update(&self, new: Value, old: &Value) -> Result<Value, AdmitError> {
        let mut typed: S::Object = decode(self.info(), &new)?;
        let old_typed: S::Object = decode(self.info(), old)?;
        self.prepare_for_update(&mut typed, &old_typed);
        self.default_fields(&mut typed);
        let errors = self.validate_update(&typed, &old_typed);
        if !errors.is_empty() {
            return Err(AdmitError::Invalid(errors));
        }
        encode(&typed)
    }

    fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        match S::Object::deserialize(obj).map(|typed| serde_json::to_value(&typed)) {
            Ok(Ok(known)) => {
                let mut out = Vec::new();
                fields::missing_paths(obj, &known, "", &mut out);
                out
            }
            // A body that does not decode is refused by admission with the decoder's error.
            _ => Vec::new(),
        }
    }

    fn admit_status_update(&self, new: Value, _old: &Value) -> Result<Value, AdmitError> {
        let typed: S::Object = decode(self.info(), &new)?;
        encode(&typed)
    }

    fn openapi_schema(&self, generator: &mut schemars::SchemaGenerator) -> Value {
        generator.subschema_for::<S::Object>().to_value()
    }

    fn table_columns(&self) -> Vec<Column> {
        let mut columns = vec![NAME_COLUMN];
        columns.extend(self.columns());
        if self.age_column() {
            // AGE sits before the wide columns, as kube-apiserver orders them.
            let at = columns
                .iter()
                .position(|c| c.priority > 0)
                .unwrap_or(columns.len());
            columns.insert(at, AGE_COLUMN);
        }
        columns
    }

    fn table_cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let typed = S::Object::deserialize(obj).ok();
        let name = typed
            .as_ref()
            .and_then(|t| self.name_cell(t))
            .map(Value::String)
            .or_else(|| obj.at("/metadata/name").cloned())
            .unwrap_or(Value::String(String::new()));
        let mut cells = vec![name];
        let columns = self.columns();
        let kind_cells = typed.map(|t| self.cells(&t, now)).unwrap_or_default();
        let mut kind_cells = kind_cells.into_iter();
        let mut age_done = !self.age_column();
        for column in &columns {
            if !age_done && column.priority > 0 {
                cells.push(Value::String(fields::age(obj, now)));
                age_done = true;
            }
            cells.push(kind_cells.next().unwrap_or(Value::String(String::new())));
        }
        if !age_done {
            cells.push(Value::String(fields::age(obj, now)));
        }
        cells
    }
}

/// Every kind served, in discovery order. Adding a kind: one module + one row here.
static KINDS: &[&dyn Kind] = &[
    &namespace::NamespaceStrategy,
    &configmap::ConfigMapStrategy,
    &secret::SecretStrategy,
    &pod::PodStrategy,
    &service::ServiceStrategy,
    &serviceaccount::ServiceAccountStrategy,
    &node::NodeStrategy,
    &event::EventStrategy,
    &endpoints::EndpointsStrategy,
    &persistentvolume::PersistentVolumeStrategy,
    &persistentvolumeclaim::PersistentVolumeClaimStrategy,
    &resourcequota::ResourceQuotaStrategy,
    &limitrange::LimitRangeStrategy,
    &deployment::DeploymentStrategy,
    &replicaset::ReplicaSetStrategy,
    &replicationcontroller::ReplicationControllerStrategy,
    &statefulset::StatefulSetStrategy,
    &daemonset::DaemonSetStrategy,
    &controllerrevision::ControllerRevisionStrategy,
    &job::JobStrategy,
    &cronjob::CronJobStrategy,
    &horizontalpodautoscaler::HorizontalPodAutoscalerStrategy,
    &poddisruptionbudget::PodDisruptionBudgetStrategy,
    &role::RoleStrategy,
    &rolebinding::RoleBindingStrategy,
    &clusterrole::ClusterRoleStrategy,
    &clusterrolebinding::ClusterRoleBindingStrategy,
    &ingress::IngressStrategy,
    &ingressclass::IngressClassStrategy,
    &storageclass::StorageClassStrategy,
    &endpointslice::EndpointSliceStrategy,
    &lease::LeaseStrategy,
    &crd::CustomResourceDefinitionStrategy,
];

pub fn kinds() -> &'static [&'static dyn Kind] {
    KINDS
}

/// The kind served at `<group>/<version>/<resource>`.
pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static dyn Kind> {
    let matches = |k: &&'static dyn Kind| {
        let info = k.info();
        info.group == group && info.version == version && info.resource == resource
    };
    KINDS
        .iter()
        .copied()
        .find(matches)
        .or_else(|| custom::active().into_iter().find(matches))
}

/// Built-in kinds, then the custom kinds CRDs define now.
pub fn all_kinds() -> Vec<&'static dyn Kind> {
    let mut out: Vec<&'static dyn Kind> = KINDS.to_vec();
    out.extend(custom::active());
    out
}

/// Group versions served, core ("") first, in a stable order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for k in all_kinds() {
        let info = k.info();
        if !out.contains(&(info.group, info.version)) {
            out.push((info.group, info.version));
        }
    }
    out
}

/// Test support: the field errors admission gives `obj` on create (panics if admitted).
#[cfg(test)]
pub fn create_errors(kind: &dyn Kind, obj: Value) -> FieldErrors {
    match kind.admit_create(obj) {
        Err(AdmitError::Invalid(errors)) => errors,
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// Test support: a kind's table column names, NAME and AGE included.
#[cfg(test)]
pub fn column_names(kind: &dyn Kind) -> Vec<&'static str> {
    kind.table_columns().iter().map(|c| c.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_unique_and_keyed_by_layout() {
        let mut seen = std::collections::HashSet::new();
        for k in kinds() {
            let info = k.info();
            assert!(seen.insert((info.group, info.resource)), "{info:?} twice");
        }
        let deploy = lookup("apps", "v1", "deployments").expect("deployments");
        assert_eq!(
            deploy.info().key_prefix(),
            "/registry/apps/deployments/".to_string()
        );
        let cm = lookup("", "v1", "configmaps").expect("configmaps");
        assert_eq!(cm.info().key_prefix(), "/registry/configmaps/".to_string());
    }

    #[test]
    fn table_columns_put_age_before_wide() {
        let pods = lookup("", "v1", "pods").expect("pods");
        let names: Vec<_> = pods.table_columns().iter().map(|c| c.name).collect();
        assert_eq!(
            &names[..7],
            &["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
    }
}
