//! `JsonPath::at`: serde_json's `Value::pointer` without its allocations.
//!
//! `Value::pointer` unescapes every segment with two `str::replace` calls, allocating two
//! Strings per segment even when there is nothing to unescape. Object paths are read many times
//! per request and per scheduling cycle (a perf profile of the leader under 700 pod creates and
//! bindings a second showed a quarter of its CPU under `pointer`, most of it in those
//! allocations), so paths without escapes are walked segment by segment in place; a path with
//! `~` falls back to `pointer`. Same results as `pointer` for every input.

use serde_json::Value;

pub trait JsonPath {
    /// The value at an RFC 6901 JSON pointer (`""` is the whole value), as `Value::pointer`.
    fn at(&self, pointer: &str) -> Option<&Value>;
}

impl JsonPath for Value {
    fn at(&self, pointer: &str) -> Option<&Value> {
        if pointer.is_empty() {
            return Some(self);
        }
        if pointer.contains('~') {
            return self.pointer(pointer);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/')
            .try_fold(self, |target, token| match target {
                Value::Object(map) => map.get(token),
                Value::Array(list) => list.get(array_index(token)?),
                _ => None,
            })
    }
}

/// An array index as RFC 6901 allows it: digits without a sign or leading zeros.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agrees_with_pointer() {
        let v = json!({"a": {"b/c": 1, "d~e": 2, "": 3, "list": [10, 11, {"x": "y"}]},
            "n": null, "s": "t"});
        for path in [
            "",
            "/",
            "/a",
            "/a/b~1c",
            "/a/d~0e",
            "/a/",
            "/a/list",
            "/a/list/0",
            "/a/list/2/x",
            "/a/list/3",
            "/a/list/01",
            "/a/list/+1",
            "/a/list/-1",
            "/a/list/",
            "/n",
            "/n/x",
            "/s",
            "/s/0",
            "a",
            "/missing",
            "/a/missing/deeper",
        ] {
            assert_eq!(v.at(path), v.pointer(path), "{path}");
        }
    }
}
