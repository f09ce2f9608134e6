//! Field errors (what a 422 Invalid lists) and the small checks every kind shares: names,
//! labels, ages as kubectl prints them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::Column;
use crate::json_path::JsonPath;

/// One invalid field, as metav1.StatusCause: `metadata.name: Invalid value: "X": detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// "FieldValueInvalid", "FieldValueRequired", ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {detail}"),
        }
    }

    /// `Too long: must have at most N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: must have at most {max} bytes"),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }
    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.chars().all(is_label_char)
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

pub const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Which rule a kind's names follow.
#[derive(Clone, Copy, Debug)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Any single URL path segment (RBAC names such as `system:controller:foo`).
    PathSegment,
}

/// Checks metadata.name (and label keys/values) by the kind's rule.
pub fn validate_meta(meta: &ObjectMeta, rule: NameRule) -> FieldErrors {
    let mut errors = FieldErrors::default();
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::required("metadata.name")),
        Some(name) => {
            let (ok, msg) = match rule {
                NameRule::Subdomain => (is_dns1123_subdomain(name), SUBDOMAIN_MSG),
                NameRule::Label => (is_dns1123_label(name), LABEL_MSG),
                NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_MSG),
                NameRule::PathSegment => {
                    path_segment_problem(name).map_or((true, ""), |m| (false, m))
                }
            };
            if !ok {
                errors.push(FieldError::invalid("metadata.name", name, msg));
            }
        }
    }
    for (key, value) in meta.labels.iter().flatten() {
        if !is_qualified_name(key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        if !is_label_value(value) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    errors
}

/// Why `name` cannot be one URL path segment, if it cannot.
fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if name.contains('/') => Some("may not contain '/'"),
        _ if name.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_name_part(name),
        None => is_name_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

/// `<field>: Invalid value: ...: field is immutable` when an update changed the value.
pub fn immutable<T: PartialEq + serde::Serialize>(new: &T, old: &T, field: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    if new != old {
        let shown = serde_json::to_string(new).unwrap_or_default();
        errors.push(FieldError::invalid(field, &shown, "field is immutable"));
    }
    errors
}

/// `<field>: Invalid value: "-1": must be greater than or equal to 0`.
pub fn nonnegative(value: Option<impl Into<i64>>, field: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    if let Some(v) = value.map(Into::into)
        && v < 0
    {
        errors.push(FieldError::invalid(
            field,
            &v.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    errors
}

/// kubectl's AGE: `metadata.creationTimestamp` relative to now.
pub fn age(obj: &Value, now: jiff::Timestamp) -> String {
    obj.at("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .map(|ts| since(ts, now))
        .unwrap_or_else(|| "<unknown>".into())
}

/// AGE from a typed object's metadata.
pub fn meta_age(meta: &ObjectMeta, now: jiff::Timestamp) -> String {
    match &meta.creation_timestamp {
        Some(t) => human_duration(now.as_second() - t.0.as_second()),
        None => "<unknown>".into(),
    }
}

/// Age of an RFC 3339 timestamp, `<unknown>` when it does not parse.
pub fn since(ts: &str, now: jiff::Timestamp) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(now.as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`, which kubectl prints ages with.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// kube-apiserver's column for kinds without a printer of their own (roles, limit ranges).
pub const CREATED_AT_COLUMN: Column = Column::new(
    "Created At",
    "date",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The `Created At` cell: the creation timestamp in RFC 3339, as the default table prints it.
pub fn created_at(meta: &ObjectMeta) -> Value {
    Value::String(
        meta.creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default(),
    )
}

/// "<none>" for empty, as kubectl prints missing values.
pub fn or_none(s: impl Into<String>) -> Value {
    let s = s.into();
    Value::String(if s.is_empty() { "<none>".into() } else { s })
}

/// Appends to `out` every path present (and not null) in `given` but absent from `kept`, the
/// same value after a round trip through the kind's type: the fields the schema does not know.
pub fn missing_paths(given: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (given, kept) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                if value.is_null() {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kept_value) => missing_paths(value, kept_value, &child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) if g.len() == k.len() => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                missing_paths(gv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_name_unknown_fields() {
        let given = serde_json::json!({"spec": {"a": 1, "foo": 2, "list": [{"x": 1, "bar": 3}], "n": null}});
        let kept = serde_json::json!({"spec": {"a": 1, "list": [{"x": 1}]}});
        let mut out = Vec::new();
        missing_paths(&given, &kept, "", &mut out);
        assert_eq!(
            out,
            vec!["spec.foo".to_string(), "spec.list[0].bar".to_string()]
        );
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1a"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("-x"));
    }

    #[test]
    fn human_durations_match_apimachinery() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
    }
}
