//! What a REST request addresses (kube-apiserver's RequestInfo): discovery, a collection or one
//! object of a kind, in a namespace or not, maybe a subresource; plus query parameters, the
//! negotiated output (plain JSON or a Table) and the body.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::status::ApiError;
use crate::registry::{self, Kind};

/// What the path names.
pub enum Target {
    /// `/api` or `/apis`.
    Root {
        legacy: bool,
    },
    /// `/api/v1` or `/apis/<group>/<version>`.
    GroupVersion {
        group: String,
        version: String,
    },
    /// `/apis/<group>`.
    Group {
        group: String,
    },
    Resource(ResourceTarget),
}

pub struct ResourceTarget {
    pub kind: &'static dyn Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses the path after `/api` or `/apis`.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (legacy, rest) = match segments.split_first() {
        Some((&"api", rest)) => (true, rest),
        Some((&"apis", rest)) => (false, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let (group, rest) = if legacy {
        ("", rest)
    } else {
        match rest.split_first() {
            None => return Ok(Target::Root { legacy }),
            Some((group, rest)) => (*group, rest),
        }
    };
    let Some((version, rest)) = rest.split_first() else {
        return if legacy {
            Ok(Target::Root { legacy })
        } else {
            Ok(Target::Group {
                group: group.to_string(),
            })
        };
    };
    let gv = || Target::GroupVersion {
        group: group.to_string(),
        version: version.to_string(),
    };
    let resource = |name: &str| registry::lookup(group, version, name).ok_or(ApiError::NoRoute);
    let target = |kind, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Ok(Target::Resource(ResourceTarget {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        }))
    };
    match rest {
        [] => Ok(gv()),
        // namespaces/<ns>/<resource>[/<name>[/<sub>]] for namespaced kinds.
        ["namespaces", ns, res, tail @ ..]
            if registry::lookup(group, version, res).is_some_and(|k| k.info().namespaced) =>
        {
            let kind = resource(res)?;
            match tail {
                [] => target(kind, Some(ns), None, None),
                [name] => target(kind, Some(ns), Some(name), None),
                [name, sub] => target(kind, Some(ns), Some(name), Some(sub)),
                _ => Err(ApiError::NoRoute),
            }
        }
        [res] => target(resource(res)?, None, None, None),
        [res, name] => target(resource(res)?, None, Some(name), None),
        [res, name, sub] => target(resource(res)?, None, Some(name), Some(sub)),
        _ => Err(ApiError::NoRoute),
    }
}

/// Query parameters, last value wins (as Go's `url.Values.Get` returns the first; clients send
/// one).
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode_component(k)?, decode_component(v)?);
        }
        Ok(Query(map))
    }

    /// Every value of a repeated parameter (`command=a&command=b`), in order.
    pub fn repeated(raw: Option<&str>, key: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if decode_component(k)? == key {
                out.push(decode_component(v)?);
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid {key} {v:?}")))
            })
            .transpose()
    }
}

fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("invalid query escape in {s:?}"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest("query is not UTF-8".into()))
}

/// How the client wants the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    /// meta.k8s.io/v1 Table (server-side printing).
    Table,
}

pub fn negotiate(headers: &HeaderMap) -> Output {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Clients list preferences in order; the first acceptable one wins.
    for choice in accept.split(',') {
        let params: Vec<&str> = choice.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or("");
        if media != "application/json" && media != "*/*" {
            continue;
        }
        let is_table = params.contains(&"as=Table");
        let v1 = params.contains(&"v=v1");
        if is_table && v1 {
            return Output::Table;
        }
        if !is_table && !params.iter().any(|p| p.starts_with("as=")) {
            return Output::Json;
        }
    }
    Output::Json
}

/// Decodes a request body as JSON, YAML or Kubernetes protobuf (by Content-Type) into an object.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode(body);
    }
    if !matches!(
        media,
        "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" | "*/*" | ""
    ) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {media:?})"
        )));
    }
    let value: Value = if media.contains("yaml") {
        serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "error decoding request body: couldn't get version/kind; json parse error: {e}"
            ))
        })?
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourceTarget {
        match parse_path(path) {
            Ok(Target::Resource(r)) => r,
            _ => panic!("{path} is not a resource"),
        }
    }

    #[test]
    fn paths() {
        let r = resource("/api/v1/namespaces/default/configmaps/x");
        assert_eq!(r.kind.info().resource, "configmaps");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("x"));
        let r = resource("/api/v1/namespaces/default");
        assert_eq!(r.kind.info().resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("default"));
        let r = resource("/apis/apps/v1/deployments");
        assert!(r.namespace.is_none() && r.name.is_none());
        assert!(matches!(
            parse_path("/apis/apps/v1"),
            Ok(Target::GroupVersion { .. })
        ));
        assert!(parse_path("/api/v1/nope").is_err());
    }

    #[test]
    fn accept_table() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .expect("header"),
        );
        assert_eq!(negotiate(&h), Output::Table);
        h.insert(header::ACCEPT, "application/json".parse().expect("header"));
        assert_eq!(negotiate(&h), Output::Json);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1")).expect("q");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
    }
}
