//! Request bodies in `application/vnd.kubernetes.protobuf`, the encoding kubectl's typed
//! clients use (`kubectl create namespace|configmap|secret|deployment|job|...`).
//!
//! The body is the magic `k8s\0` followed by a `runtime.Unknown` envelope naming the object's
//! apiVersion and kind, whose `raw` bytes are the object's message. We decode by reflection over
//! the wire schema in proto/proto/k8s/ and produce the JSON the same client would have sent, so
//! everything after decoding (admission, validation, storage) is shared with JSON bodies.
//!
//! Go's protobuf marshaller writes non-pointer fields even when they hold their zero value, and
//! Go's JSON omits them; we drop zero scalars the same way, except for the pointer fields whose
//! zero differs from their default (`replicas: 0` must not become the default 1).

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage};
use serde_json::{Map, Value};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";
const ENVELOPE: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";

/// Pointer fields whose zero value means something other than "unset" (their API default is
/// not zero), so an explicit zero on the wire must reach the JSON.
const MEANINGFUL_ZERO: &[&str] = &[
    "replicas",
    "minReplicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "defaultMode",
    "expirationSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "allocateLoadBalancerNodePorts",
    "hostUsers",
];

fn pool() -> Result<&'static DescriptorPool, ApiError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(skiff_proto::K8S_DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ApiError::Internal(format!("protobuf schema: {e}")))
}

/// Decodes a protobuf request body into the JSON object it stands for (with apiVersion and
/// kind set from the envelope).
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(ApiError::BadRequest(
            "protobuf body does not start with the Kubernetes magic prefix".into(),
        ));
    };
    let pool = pool()?;
    let unknown = pool
        .get_message_by_name(ENVELOPE)
        .ok_or_else(|| ApiError::Internal(format!("protobuf schema lacks {ENVELOPE}")))?;
    let envelope = DynamicMessage::decode(unknown, envelope).map_err(malformed)?;
    let text = |path: &[&str]| -> String {
        lookup(&envelope, path)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let api_version = text(&["typeMeta", "apiVersion"]);
    let kind = text(&["typeMeta", "kind"]);
    let encoding = text(&["contentEncoding"]);
    if !encoding.is_empty() {
        return Err(ApiError::UnsupportedMediaType(format!(
            "protobuf content encoding {encoding:?} is not supported"
        )));
    }
    let raw = match envelope.get_field_by_name("raw").as_deref() {
        Some(prost_reflect::Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let message = message_name(&api_version, &kind);
    let descriptor = pool.get_message_by_name(&message).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "{kind} in version {api_version:?} cannot be sent as protobuf to this server; send it as JSON or YAML (kubectl create -f)"
        ))
    })?;
    let object = DynamicMessage::decode(descriptor, raw).map_err(malformed)?;
    let mut json = to_json(&object)?;
    if let Value::Object(map) = &mut json {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(json)
}

fn malformed(e: prost_reflect::prost::DecodeError) -> ApiError {
    ApiError::BadRequest(format!("malformed protobuf body: {e}"))
}

/// `apps/v1` + `Deployment` -> `k8s.io.api.apps.v1.Deployment`; groups are named by their
/// first label (`rbac.authorization.k8s.io` -> `rbac`), as the Kubernetes proto packages are.
fn message_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let package = group.split('.').next().unwrap_or(group);
    format!("k8s.io.api.{package}.{version}.{kind}")
}

fn lookup(message: &DynamicMessage, path: &[&str]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let value = message.get_field_by_name(first)?;
    match (&*value, rest.is_empty()) {
        (prost_reflect::Value::String(s), true) => Some(Value::String(s.clone())),
        (prost_reflect::Value::Message(inner), false) => lookup(inner, rest),
        _ => None,
    }
}

/// The JSON of one message, Kubernetes-style: only fields present on the wire, zero scalars
/// dropped (see the module comment), special apimachinery types in their JSON forms.
fn to_json(message: &DynamicMessage) -> Result<Value, ApiError> {
    let descriptor = message.descriptor();
    if let Some(unknown) = message.unknown_fields().next() {
        return Err(ApiError::BadRequest(format!(
            "protobuf field {} of {} is not known to this server",
            unknown.number(),
            descriptor.full_name()
        )));
    }
    match descriptor.full_name() {
        TIME | MICRO_TIME => return Ok(time_json(message)),
        INT_OR_STRING => return Ok(int_or_string_json(message)),
        QUANTITY => return Ok(field_or_null(message, "string")),
        RAW_EXTENSION => return raw_extension_json(message),
        _ => {}
    }
    let mut out = Map::new();
    for field in descriptor.fields() {
        if !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        let json = if field.is_map() {
            map_json(&value)?
        } else if field.is_list() {
            match &*value {
                prost_reflect::Value::List(items) => Value::Array(
                    items
                        .iter()
                        .map(value_json)
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                other => value_json(other)?,
            }
        } else {
            let json = value_json(&value)?;
            if is_zero(&json) && !MEANINGFUL_ZERO.contains(&field.name()) {
                continue;
            }
            json
        };
        if json.is_null() {
            continue;
        }
        out.insert(field.name().to_string(), json);
    }
    Ok(Value::Object(out))
}

fn value_json(value: &prost_reflect::Value) -> Result<Value, ApiError> {
    use prost_reflect::Value as V;
    Ok(match value {
        V::Bool(b) => Value::Bool(*b),
        V::I32(n) | V::EnumNumber(n) => Value::from(*n),
        V::I64(n) => Value::from(*n),
        V::U32(n) => Value::from(*n),
        V::U64(n) => Value::from(*n),
        V::F32(n) => Value::from(f64::from(*n)),
        V::F64(n) => Value::from(*n),
        V::String(s) => Value::String(s.clone()),
        V::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        V::Message(m) => to_json(m)?,
        V::List(items) => Value::Array(items.iter().map(value_json).collect::<Result<_, _>>()?),
        V::Map(_) => map_json(value)?,
    })
}

fn map_json(value: &prost_reflect::Value) -> Result<Value, ApiError> {
    let prost_reflect::Value::Map(entries) = value else {
        return value_json(value);
    };
    let mut out = Map::new();
    for (key, value) in entries {
        let key = match key {
            MapKey::String(s) => s.clone(),
            MapKey::Bool(b) => b.to_string(),
            MapKey::I32(n) => n.to_string(),
            MapKey::I64(n) => n.to_string(),
            MapKey::U32(n) => n.to_string(),
            MapKey::U64(n) => n.to_string(),
        };
        out.insert(key, value_json(value)?);
    }
    Ok(Value::Object(out))
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

fn field_or_null(message: &DynamicMessage, name: &str) -> Value {
    match message.get_field_by_name(name).as_deref() {
        Some(value) => value_json(value).unwrap_or(Value::Null),
        None => Value::Null,
    }
}

/// metav1.Time: the zero time is JSON null (Go's omitempty drops it); others are RFC 3339.
fn time_json(message: &DynamicMessage) -> Value {
    let number = |name: &str| field_or_null(message, name).as_i64().unwrap_or(0);
    let (seconds, nanos) = (number("seconds"), number("nanos"));
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let Ok(ts) = jiff::Timestamp::new(seconds, nanos as i32) else {
        return Value::Null;
    };
    let precision = if message.descriptor().full_name() == MICRO_TIME {
        Some(6)
    } else {
        Some(0)
    };
    Value::String(format!("{:.*}", precision.unwrap_or(0), ts))
}

/// intstr.IntOrString: type 0 = int, 1 = string.
fn int_or_string_json(message: &DynamicMessage) -> Value {
    let is_string = field_or_null(message, "type").as_i64() == Some(1);
    if is_string {
        Value::String(
            field_or_null(message, "strVal")
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    } else {
        Value::from(field_or_null(message, "intVal").as_i64().unwrap_or(0))
    }
}

/// runtime.RawExtension: the raw bytes are JSON already (kubectl never nests protobuf).
fn raw_extension_json(message: &DynamicMessage) -> Result<Value, ApiError> {
    match message.get_field_by_name("raw").as_deref() {
        Some(prost_reflect::Value::Bytes(raw)) if !raw.is_empty() => serde_json::from_slice(raw)
            .map_err(|e| ApiError::BadRequest(format!("embedded object is not JSON: {e}"))),
        _ => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::MessageDescriptor;
    use prost_reflect::prost::Message as _;

    fn descriptor(name: &str) -> MessageDescriptor {
        pool()
            .expect("pool")
            .get_message_by_name(name)
            .expect("message")
    }

    /// Builds a body the way client-go does: magic + Unknown{typeMeta, raw}.
    fn body(api_version: &str, kind: &str, object: DynamicMessage) -> Vec<u8> {
        let mut type_meta =
            DynamicMessage::new(descriptor("k8s.io.apimachinery.pkg.runtime.TypeMeta"));
        type_meta.set_field_by_name(
            "apiVersion",
            prost_reflect::Value::String(api_version.into()),
        );
        type_meta.set_field_by_name("kind", prost_reflect::Value::String(kind.into()));
        let mut unknown = DynamicMessage::new(descriptor(ENVELOPE));
        unknown.set_field_by_name("typeMeta", prost_reflect::Value::Message(type_meta));
        unknown.set_field_by_name(
            "raw",
            prost_reflect::Value::Bytes(object.encode_to_vec().into()),
        );
        unknown.set_field_by_name(
            "contentEncoding",
            prost_reflect::Value::String(String::new()),
        );
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn message(name: &str, json: serde_json::Value) -> DynamicMessage {
        let text = json.to_string();
        let mut de = serde_json::Deserializer::from_str(&text);
        DynamicMessage::deserialize(descriptor(name), &mut de).expect("message from json")
    }

    #[test]
    fn decodes_an_autoscaler_as_kubectl_autoscale_sends_it() {
        let hpa = message(
            "k8s.io.api.autoscaling.v2.HorizontalPodAutoscaler",
            serde_json::json!({
                "metadata": {"name": "web", "creationTimestamp": {}},
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50}}}]
                },
                "status": {"currentReplicas": 0, "desiredReplicas": 0}
            }),
        );
        let json = decode(&body("autoscaling/v2", "HorizontalPodAutoscaler", hpa)).expect("decode");
        assert_eq!(json["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(json["spec"]["maxReplicas"], 3);
        assert_eq!(
            json["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
    }

    #[test]
    fn decodes_a_deployment_as_kubectl_create_sends_it() {
        let deployment = message(
            "k8s.io.api.apps.v1.Deployment",
            serde_json::json!({
                "metadata": {"name": "web", "namespace": "", "creationTimestamp": {}, "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}], "resources": {}}]}
                    },
                    "strategy": {}
                },
                "status": {}
            }),
        );
        let json = decode(&body("apps/v1", "Deployment", deployment)).expect("decode");
        assert_eq!(json["apiVersion"], "apps/v1");
        assert_eq!(json["kind"], "Deployment");
        assert_eq!(
            json["metadata"],
            serde_json::json!({"name": "web", "labels": {"app": "web"}})
        );
        assert_eq!(
            json["spec"]["replicas"], 0,
            "an explicit zero replicas survives"
        );
        let container = &json["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "nginx");
        assert_eq!(container["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn secrets_bytes_become_base64_and_ports_int_or_string() {
        let secret = message(
            "k8s.io.api.core.v1.Secret",
            serde_json::json!({"metadata": {"name": "s"}, "data": {"a": "Yg=="}, "type": "Opaque"}),
        );
        let json = decode(&body("v1", "Secret", secret)).expect("decode");
        assert_eq!(json["data"]["a"], "Yg==");
        let service = message(
            "k8s.io.api.core.v1.Service",
            serde_json::json!({"metadata": {"name": "svc"}, "spec": {"ports": [
                {"port": 80, "targetPort": {"type": 0, "intVal": 8080}},
                {"port": 81, "targetPort": {"type": 1, "strVal": "http"}}]}}),
        );
        let json = decode(&body("v1", "Service", service)).expect("decode");
        assert_eq!(json["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(json["spec"]["ports"][1]["targetPort"], "http");
    }

    #[test]
    fn rbac_group_maps_to_its_package_and_unknown_kinds_are_415() {
        assert_eq!(
            message_name("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            "k8s.io.api.rbac.v1.ClusterRoleBinding"
        );
        assert_eq!(
            message_name("v1", "Namespace"),
            "k8s.io.api.core.v1.Namespace"
        );
        let ns = message("k8s.io.api.core.v1.Namespace", serde_json::json!({}));
        let err = decode(&body("example.com/v1", "Widget", ns)).expect_err("unknown kind");
        assert!(matches!(err, ApiError::UnsupportedMediaType(_)), "{err:?}");
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert!(matches!(decode(b"nope"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff"),
            Err(ApiError::BadRequest(_))
        ));
    }
}
