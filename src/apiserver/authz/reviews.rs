//! The review resources: create-only, never stored, answered from the authenticator and the
//! authorizer. `kubectl auth can-i` posts SelfSubjectAccessReviews (and SelfSubjectRulesReviews
//! for `--list`), `kubectl auth whoami` a SelfSubjectReview; SubjectAccessReview asks on behalf
//! of another user (for admins and webhooks).

use serde_json::{Value, json};

use super::{Attributes, Authorizer};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::status::ApiError;

/// A review resource as discovery lists it.
pub struct ReviewResource {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

pub const REVIEWS: &[ReviewResource] = &[
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
    },
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
    },
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
    },
    ReviewResource {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
    },
    ReviewResource {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
];

/// The review a POST path names (`/apis/authorization.k8s.io/v1/selfsubjectaccessreviews`).
pub fn lookup(path: &str) -> Option<&'static ReviewResource> {
    let rest = path.strip_prefix("/apis/")?.trim_end_matches('/');
    let mut parts = rest.split('/');
    let (group, version, resource) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    REVIEWS
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// Request attributes from a SubjectAccessReview spec.
fn attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(ra) = spec.get("resourceAttributes") {
        return Ok(Attributes {
            verb: text(ra, "verb"),
            api_group: text(ra, "group"),
            resource: text(ra, "resource"),
            subresource: text(ra, "subresource"),
            name: text(ra, "name"),
            namespace: text(ra, "namespace"),
            path: None,
        });
    }
    if let Some(nra) = spec.get("nonResourceAttributes") {
        return Ok(Attributes {
            verb: text(nra, "verb"),
            path: Some(text(nra, "path")),
            ..Attributes::default()
        });
    }
    Err(ApiError::BadRequest(
        "spec: exactly one of resourceAttributes and nonResourceAttributes must be specified"
            .into(),
    ))
}

fn decide(authorizer: &Authorizer, user: &UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let attrs = attributes(spec)?;
    let (allowed, reason) = if user.in_group(super::defaults::SUPERUSER_GROUP) {
        (
            true,
            format!("{} is a superuser group", super::defaults::SUPERUSER_GROUP),
        )
    } else {
        authorizer.allows(user, &attrs)
    };
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(status)
}

/// Answers a review POSTed by `user`; the response is the review with its status filled in.
pub fn answer(
    review: &ReviewResource,
    authorizer: &Authorizer,
    user: &UserInfo,
    mut body: Value,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the review must be a JSON object".into(),
        ));
    }
    body["apiVersion"] = json!(format!("{}/{}", review.group, review.version));
    body["kind"] = json!(review.kind);
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    match review.resource {
        "selfsubjectaccessreviews" => {
            body["status"] = decide(authorizer, user, &spec)?;
        }
        "subjectaccessreviews" => {
            let name = spec
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let groups: Vec<String> = spec
                .get("groups")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if name.is_empty() && groups.is_empty() {
                return Err(ApiError::BadRequest(
                    "spec.user or spec.groups is required".into(),
                ));
            }
            let subject = UserInfo { name, groups };
            body["status"] = decide(authorizer, &subject, &spec)?;
        }
        "selfsubjectrulesreviews" => {
            let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
            let mut resource_rules = Vec::new();
            let mut non_resource_rules = Vec::new();
            let rules = if user.in_group(super::defaults::SUPERUSER_GROUP) {
                vec![
                    json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                    json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
                ]
            } else {
                authorizer.rules_for(user, namespace)
            };
            for rule in rules {
                if rule.get("nonResourceURLs").is_some() {
                    non_resource_rules.push(rule);
                } else {
                    resource_rules.push(rule);
                }
            }
            body["status"] = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": false,
            });
        }
        // The status was filled in by the caller, which can verify tokens.
        "tokenreviews" => {}
        "selfsubjectreviews" => {
            body["status"] = json!({"userInfo": {"username": user.name, "groups": user.groups}});
        }
        _ => return Err(ApiError::NoRoute),
    }
    if body.get("metadata").is_none() {
        body["metadata"] = json!({});
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_reviews() {
        assert_eq!(
            lookup("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").map(|r| r.kind),
            Some("SelfSubjectAccessReview")
        );
        assert!(lookup("/apis/apps/v1/deployments").is_none());
    }

    #[test]
    fn superusers_may_and_others_may_not() {
        let authz = Authorizer::default();
        let review =
            lookup("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").expect("review");
        let body = json!({"spec": {"resourceAttributes": {"verb": "create", "resource": "pods", "namespace": "default"}}});
        let admin = UserInfo::authenticated("system:admin".into(), vec!["system:masters".into()]);
        let answer_for = |u: &UserInfo| answer(review, &authz, u, body.clone()).expect("answer");
        assert_eq!(answer_for(&admin)["status"]["allowed"], true);
        let bob = UserInfo::authenticated("bob".into(), vec![]);
        assert_eq!(answer_for(&bob)["status"]["allowed"], false);
        assert!(answer(review, &authz, &bob, json!({"spec": {}})).is_err());
    }
}
