//! Discovery: /version, /api, /api/v1, /apis, /apis/<group>[/<version>], all generated from the
//! registry's kind table, plus the OpenAPI v3 index kubectl consults before it validates.
//!
//! Only legacy (unaggregated) discovery is served: kubectl 1.32 asks for the aggregated form
//! first, gets `application/json` back and falls back to these documents.
//!
//! OpenAPI: kubectl validates on the client only when the server cannot; it decides by finding
//! a `fieldValidation` query parameter on the kind's PATCH operation in /openapi/v3. So each
//! group version gets a small v3 document listing its object paths with that parameter and the
//! `x-kubernetes-group-version-kind` extension, no schemas. /openapi/v2 is 404: kubectl then
//! computes apply patches from its built-in types. Full schemas (kubectl explain) come later.

use serde_json::{Value, json};

use super::authz::reviews::REVIEWS;
use super::resource_metrics;
use crate::registry::{self, KindInfo};

const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-skiff",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// `/api`: APIVersions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Group versions served: the registry's kinds, then the review-only groups.
fn all_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out = registry::group_versions();
    out.push((resource_metrics::GROUP, resource_metrics::VERSION));
    for review in REVIEWS {
        if !out.contains(&(review.group, review.version)) {
            out.push((review.group, review.version));
        }
    }
    out
}

fn group_json(group: &str) -> Value {
    let versions: Vec<Value> = all_group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": preferred,
    })
}

/// `/apis`: APIGroupList of the named groups.
pub fn groups() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in all_group_versions() {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": names.into_iter().map(group_json).collect::<Vec<_>>(),
    })
}

/// `/apis/<group>`: APIGroup, or None when the group is not served.
pub fn group(group: &str) -> Option<Value> {
    let g = group_json(group);
    if g["versions"].as_array().is_none_or(|v| v.is_empty()) {
        return None;
    }
    let mut g = g;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn resource_json(info: &KindInfo) -> Value {
    let mut r = json!({
        "name": info.resource,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": VERBS,
    });
    if !info.short_names.is_empty() {
        r["shortNames"] = json!(info.short_names);
    }
    if !info.categories.is_empty() {
        r["categories"] = json!(info.categories);
    }
    r
}

/// `<resource>/<sub>` as discovery lists it (kubectl scale and the scheduler look for these).
fn subresource_json(info: &KindInfo, sub: &str) -> Value {
    let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match sub {
        "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
        "binding" => ("Binding", "", "", &["create"]),
        "eviction" => ("Eviction", "policy", "v1", &["create"]),
        "exec" => ("PodExecOptions", "", "", &["create", "get"]),
        "attach" => ("PodAttachOptions", "", "", &["create", "get"]),
        "log" => ("Pod", "", "", &["get"]),
        _ => (info.kind, "", "", &["get", "patch", "update"]),
    };
    let mut r = json!({
        "name": format!("{}/{sub}", info.resource),
        "singularName": "",
        "namespaced": info.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if !group.is_empty() {
        r["group"] = json!(group);
        r["version"] = json!(version);
    }
    r
}

/// `/api/v1` or `/apis/<group>/<version>`: APIResourceList, or None when not served.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let list: Vec<Value> = registry::all_kinds()
        .iter()
        .map(|k| k.info())
        .filter(|i| i.group == group && i.version == version)
        .flat_map(|info| {
            let mut out = vec![resource_json(info)];
            out.extend(
                super::subresources::subresources_of(info)
                    .into_iter()
                    .map(|sub| subresource_json(info, sub)),
            );
            out
        })
        .chain(
            [
                &resource_metrics::NODE_METRICS,
                &resource_metrics::POD_METRICS,
            ]
            .into_iter()
            .filter(|i| i.group == group && i.version == version)
            .map(|i| {
                json!({"name": i.resource, "singularName": "", "namespaced": i.namespaced,
                           "kind": i.kind, "verbs": ["get", "list"]})
            }),
        )
        .chain(
            REVIEWS
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .map(|r| {
                    json!({"name": r.resource, "singularName": "", "namespaced": r.namespaced,
                           "kind": r.kind, "verbs": ["create"]})
                }),
        )
        .collect();
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

/// The OpenAPI v3 path of a group version: `api/v1` or `apis/<group>/<version>`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in all_group_versions() {
        let path = openapi_path(g, v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/<path>`: object paths of one group version, schema-less.
pub fn openapi_v3_document(path: &str) -> Option<Value> {
    let (group, version) = all_group_versions()
        .into_iter()
        .find(|(g, v)| openapi_path(g, v) == path)?;
    let field_validation = json!({
        "name": "fieldValidation",
        "in": "query",
        "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
        "schema": {"type": "string", "uniqueItems": true},
    });
    let mut paths = serde_json::Map::new();
    for info in registry::all_kinds().iter().map(|k| k.info()) {
        if info.group != group || info.version != version {
            continue;
        }
        let base = format!("/{}", openapi_path(group, version));
        let object_path = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.resource)
        } else {
            format!("{base}/{}/{{name}}", info.resource)
        };
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", info.kind),
                "parameters": [field_validation.clone()],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk.clone(),
            })
        };
        paths.insert(
            object_path,
            json!({"patch": operation("patch"), "put": operation("put")}),
        );
    }
    // The create-only reviews: kubectl's validation looks their kinds up here too.
    for review in REVIEWS
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": review.group, "version": review.version, "kind": review.kind});
        let operation = json!({
            "operationId": format!("create{}", review.kind),
            "parameters": [field_validation.clone()],
            "responses": {"201": {"description": "Created"}},
            "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind": gvk,
        });
        paths.insert(
            format!("/{}/{}", openapi_path(group, version), review.resource),
            json!({"post": operation.clone(), "patch": operation}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-skiff"},
        "paths": paths,
        "components": {"schemas": schemas(group, version)},
    }))
}

/// The schemas of a group version's kinds and everything they refer to, each kind's marked with
/// `x-kubernetes-group-version-kind` (how `kubectl explain` finds it).
fn schemas(group: &str, version: &str) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut roots = Vec::new();
    for kind in registry::all_kinds() {
        let info = kind.info();
        if info.group != group || info.version != version {
            continue;
        }
        let schema = kind.openapi_schema(&mut generator);
        roots.push((info, schema));
    }
    let mut definitions: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    for (info, schema) in roots {
        let gvk = json!([{"group": info.group, "version": info.version, "kind": info.kind}]);
        let name = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .rsplit('/')
                .next()
                .unwrap_or(info.kind)
                .to_string(),
            None => {
                // Custom resources: an inline schema, named as kube-apiserver names them.
                let reversed: Vec<&str> = info.group.split('.').rev().collect();
                let name = format!("{}.{}.{}", reversed.join("."), info.version, info.kind);
                definitions.insert(name.clone(), schema);
                name
            }
        };
        if let Some(Value::Object(definition)) = definitions.get_mut(&name) {
            definition.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
    }
    Value::Object(definitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_kinds() {
        let core = resources("", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"configmaps") && names.contains(&"pods"));
        assert!(resources("apps", "v1").is_some());
        assert!(resources("nope", "v1").is_none());
        assert_eq!(groups()["groups"][0]["name"], "apps");
        let doc = openapi_v3_document("apis/apps/v1").expect("doc");
        let path = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(path["patch"]["parameters"][0]["name"], "fieldValidation");
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"].is_object());
    }
}
