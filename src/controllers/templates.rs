//! What the Job, StatefulSet and DaemonSet controllers share about pod templates: the pod a
//! controller makes from its template, and the ControllerRevisions recording each template a
//! StatefulSet or DaemonSet had (what `kubectl rollout history` lists and `rollout undo`
//! applies back).
//!
//! A revision is stored as Kubernetes stores it, so kubectl reads it unchanged: named
//! `<owner>-<hash>`, labelled with the template's labels (kubectl finds revisions by the
//! owner's selector) and `controller.kubernetes.io/hash`, `data` a strategic merge patch
//! replacing `spec.template`, `revision` a number growing with each new (or re-applied)
//! template.

use std::sync::Arc;

use serde_json::{Value, json};

use super::informer::{Informer, uid_of};
use super::ownership::{controller_reference, controller_uid, is_deleting};
use super::rollout::template_hash;
use super::{Error, modify};
use crate::apiserver::objects::{DeleteOptions, Objects, Part, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::{Kind, KindInfo};

/// The label a StatefulSet's or DaemonSet's pod carries naming its revision.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
const CR_HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// Old revisions kept when the owner does not say (Kubernetes' default).
const DEFAULT_HISTORY_LIMIT: usize = 10;

/// A new pod from `template`, controlled by `owner`; the caller names it (name or
/// generateName) and adds what its kind needs.
pub fn pod_from_template(owner: &Value, info: &KindInfo, template: &Value) -> Result<Value, Error> {
    let mut meta = json!({"ownerReferences": [controller_reference(owner, info)]});
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template.at(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    let spec = template.get("spec").cloned().ok_or_else(|| {
        Error::Api(ApiError::BadRequest(format!(
            "{} {} has no pod template spec",
            info.kind,
            name_of(owner)
        )))
    })?;
    Ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}))
}

/// The store revision a write returned (its resourceVersion), for `Expectations::created`.
pub fn written_revision(object: &Value) -> i64 {
    object
        .at("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Sets one label on an object.
pub fn set_label(object: &mut Value, key: &str, value: &str) {
    if !object.at("/metadata/labels").is_some_and(Value::is_object) {
        object["metadata"]["labels"] = json!({});
    }
    object["metadata"]["labels"][key] = json!(value);
}

pub fn revision_number(revision: &Value) -> i64 {
    revision
        .get("revision")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The pod template a revision records.
pub fn revision_template(revision: &Value) -> Option<Value> {
    let mut template = revision.at("/data/spec/template")?.clone();
    if let Some(t) = template.as_object_mut() {
        t.remove("$patch");
    }
    Some(template)
}

/// The revision object for `owner`'s current template.
fn new_revision(owner: &Value, info: &KindInfo, hash: &str, number: i64) -> Value {
    let template = owner.at("/spec/template").cloned().unwrap_or(json!({}));
    let mut patch_template = template.clone();
    patch_template["$patch"] = json!("replace");
    let mut labels = template
        .at("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels[CR_HASH_LABEL] = json!(hash);
    let mut meta = json!({
        "name": format!("{}-{hash}", name_of(owner)),
        "labels": labels,
        "ownerReferences": [controller_reference(owner, info)],
    });
    if let Some(cause) = owner.at("/metadata/annotations/kubernetes.io~1change-cause") {
        meta["annotations"] = json!({"kubernetes.io/change-cause": cause});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": meta,
        "data": {"spec": {"template": patch_template}},
        "revision": number,
    })
}

/// The ControllerRevisions of one owner, and the kind to write them as.
pub struct Revisions<'a> {
    pub objects: &'a Objects,
    pub kind: &'static dyn Kind,
    pub cache: &'a Informer,
}

impl Revisions<'_> {
    /// The revisions `owner` controls, oldest first.
    pub fn owned(&self, owner: &Value, namespace: &str) -> Vec<Arc<Value>> {
        let uid = uid_of(owner);
        let mut owned: Vec<Arc<Value>> = self
            .cache
            .list_namespace(namespace)
            .into_iter()
            .filter(|r| controller_uid(r) == Some(uid) && !is_deleting(r))
            .collect();
        owned.sort_by_key(|r| revision_number(r));
        owned
    }

    /// The revision of `owner`'s current template (the update revision), created, or renumbered
    /// to be the newest when an older template comes back, after Kubernetes' history handling.
    /// Then revisions beyond the owner's revisionHistoryLimit (default 10) not in `keep`
    /// (names) are deleted, oldest first.
    pub async fn sync(
        &self,
        owner: &Value,
        info: &KindInfo,
        namespace: &str,
        keep: &[&str],
    ) -> Result<Value, Error> {
        let template = owner.at("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template, None);
        let history_limit = owner
            .at("/spec/revisionHistoryLimit")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_HISTORY_LIMIT, |l| l as usize);
        let owned = self.owned(owner, namespace);
        let newest = owned.last().map(|r| revision_number(r)).unwrap_or(0);
        let name = format!("{}-{hash}", name_of(owner));
        let scope = Scope::new(self.kind, Some(namespace));
        let update = match owned.iter().find(|r| name_of(r) == name) {
            Some(existing) if revision_number(existing) == newest => (**existing).clone(),
            Some(existing) => {
                let change = |r: &mut Value| r["revision"] = json!(newest + 1);
                let written = modify(
                    self.objects,
                    self.kind,
                    Some(namespace),
                    name_of(existing),
                    Part::Main,
                    change,
                )
                .await?;
                written.unwrap_or_else(|| (**existing).clone())
            }
            None => {
                let revision = new_revision(owner, info, &hash, newest + 1);
                match self.objects.create(scope, revision, false).await {
                    Ok(created) => created,
                    // Our cache lags our own create: read it back.
                    Err(ApiError::AlreadyExists { .. }) => {
                        self.objects.get(scope, &name, true).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut old: Vec<&Arc<Value>> = owned
            .iter()
            .filter(|r| name_of(r) != name && !keep.contains(&name_of(r)))
            .collect();
        if old.len() > history_limit {
            let surplus = old.len() - history_limit;
            for revision in old.drain(..surplus) {
                match self
                    .objects
                    .delete(scope, name_of(revision), &DeleteOptions::default())
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(update)
    }
}

/// A pod of `template` for an owner at revision `hash`, labelled with it.
pub fn revision_pod(
    owner: &Value,
    info: &KindInfo,
    template: &Value,
    hash: &str,
) -> Result<Value, Error> {
    let mut pod = pod_from_template(owner, info, template)?;
    set_label(&mut pod, REVISION_HASH_LABEL, hash);
    Ok(pod)
}

/// The hash part of a revision's name (`<owner>-<hash>`).
pub fn revision_hash(revision: &Value) -> &str {
    revision
        .at(&format!(
            "/metadata/labels/{}",
            CR_HASH_LABEL.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_record_the_template_as_a_replace_patch() {
        let info = crate::registry::lookup("apps", "v1", "daemonsets")
            .expect("kind")
            .info();
        let ds = json!({"metadata": {"name": "agent", "uid": "u1",
                "annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": []}}}});
        let r = new_revision(&ds, info, "abc", 3);
        assert_eq!(r["metadata"]["name"], "agent-abc");
        assert_eq!(r["metadata"]["labels"]["app"], "agent");
        assert_eq!(revision_hash(&r), "abc");
        assert_eq!(r["data"]["spec"]["template"]["$patch"], "replace");
        assert_eq!(revision_number(&r), 3);
        assert_eq!(
            r["metadata"]["annotations"]["kubernetes.io/change-cause"],
            "v2"
        );
        assert_eq!(revision_template(&r), ds.at("/spec/template").cloned());
        let pod = revision_pod(&ds, info, &ds["spec"]["template"], "abc").expect("pod");
        assert_eq!(pod["metadata"]["labels"][REVISION_HASH_LABEL], "abc");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    }
}
