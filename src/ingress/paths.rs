//! Ingress path matching and rewriting, as the Ingress API defines it:
//! - `Exact`: the request path equals the path (case-sensitive);
//! - `Prefix`: the path's `/`-separated elements are a prefix of the request path's (`/foo`
//!   matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` is ignored);
//! - `ImplementationSpecific`: like Prefix, or — on an Ingress with `use-regex` or
//!   `rewrite-target` — a case-insensitive regular expression anchored at the start of the
//!   path, as ingress-nginx treats it.
//!
//! Among matching paths the longest wins, and on equal length Exact beats Prefix (the API's
//! rule); regular expressions rank by pattern length after both, as nginx orders its regex
//! locations.

use std::cmp::Ordering;

use regex::Regex;

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Without its trailing `/` (`""` for `/`, which matches everything).
    Prefix(String),
    Pattern(Regex),
}

#[derive(Debug, thiserror::Error)]
#[error("path {path:?} is not a valid regular expression: {source}")]
pub struct PatternError {
    path: String,
    source: regex::Error,
}

impl PathMatch {
    /// The matcher for one Ingress path. `path_type` is already validated by the API server;
    /// anything unknown is treated as Prefix.
    pub fn new(path: &str, path_type: &str, regex_paths: bool) -> Result<PathMatch, PatternError> {
        let path = if path.is_empty() { "/" } else { path };
        Ok(match path_type {
            "Exact" => PathMatch::Exact(path.to_string()),
            "ImplementationSpecific" if regex_paths => {
                let pattern = format!("(?i)^{path}");
                let regex = Regex::new(&pattern).map_err(|source| PatternError {
                    path: path.to_string(),
                    source,
                })?;
                PathMatch::Pattern(regex)
            }
            _ => PathMatch::Prefix(path.trim_end_matches('/').to_string()),
        })
    }

    pub fn matches(&self, request_path: &str) -> bool {
        match self {
            PathMatch::Exact(path) => request_path == path,
            PathMatch::Prefix(prefix) => {
                prefix.is_empty()
                    || request_path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Pattern(regex) => regex.is_match(request_path),
        }
    }

    /// Length for precedence: longer (more specific) paths are tried first.
    fn length(&self) -> usize {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.len(),
            PathMatch::Pattern(r) => r.as_str().len() - "(?i)^".len(),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            PathMatch::Exact(_) => 0,
            PathMatch::Prefix(_) => 1,
            PathMatch::Pattern(_) => 2,
        }
    }

    /// Precedence between two paths of one host: Exact and Prefix by length (Exact first on a
    /// tie), then patterns by length. `Less` is tried first.
    pub fn precedence(&self, other: &PathMatch) -> Ordering {
        let literal = |m: &PathMatch| matches!(m, PathMatch::Pattern(_));
        literal(self)
            .cmp(&literal(other))
            .then_with(|| other.length().cmp(&self.length()))
            .then_with(|| self.rank().cmp(&other.rank()))
    }

    /// The upstream path for `request_path` under nginx's `rewrite <path> <target> break`:
    /// the whole path becomes `target` with `$1`..`$9` replaced by the pattern's groups
    /// (empty when absent). The query string is the caller's to keep.
    pub fn rewrite(&self, request_path: &str, target: &str) -> String {
        let captures = match self {
            PathMatch::Pattern(regex) => regex.captures(request_path),
            _ => None,
        };
        let mut out = String::with_capacity(target.len() + request_path.len());
        let mut chars = target.chars().peekable();
        while let Some(c) = chars.next() {
            let group = chars.peek().and_then(|d| d.to_digit(10));
            match (c, group) {
                ('$', Some(index)) => {
                    chars.next();
                    if let Some(m) = captures.as_ref().and_then(|c| c.get(index as usize)) {
                        out.push_str(m.as_str());
                    }
                }
                _ => out.push(c),
            }
        }
        if out.starts_with('/') {
            out
        } else {
            format!("/{out}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, kind: &str) -> PathMatch {
        PathMatch::new(path, kind, true).expect("valid")
    }

    #[test]
    fn prefix_matches_whole_elements() {
        let foo = m("/foo", "Prefix");
        for yes in ["/foo", "/foo/", "/foo/bar"] {
            assert!(foo.matches(yes), "{yes}");
        }
        for no in ["/foobar", "/", "/fo", "/bar/foo"] {
            assert!(!foo.matches(no), "{no}");
        }
        // A trailing slash on the path changes nothing.
        assert!(m("/foo/", "Prefix").matches("/foo"));
        // `/` is every path.
        assert!(m("/", "Prefix").matches("/anything/at/all"));
        assert!(m("/aaa/bb", "Prefix").matches("/aaa/bb/ccc"));
        assert!(!m("/aaa/bb", "Prefix").matches("/aaa/bbb"));
    }

    #[test]
    fn exact_is_exact() {
        let foo = m("/foo", "Exact");
        assert!(foo.matches("/foo"));
        assert!(!foo.matches("/foo/"));
        assert!(!foo.matches("/FOO"));
    }

    #[test]
    fn implementation_specific_is_prefix_unless_regex() {
        let plain = PathMatch::new("/foo", "ImplementationSpecific", false).expect("valid");
        assert!(matches!(plain, PathMatch::Prefix(_)));
        let pattern = m("/api(/|$)(.*)", "ImplementationSpecific");
        assert!(pattern.matches("/api/v1/things"));
        assert!(pattern.matches("/API"), "case-insensitive like nginx's ~*");
        assert!(!pattern.matches("/apis"));
        assert!(!pattern.matches("/v1/api/"), "anchored at the start");
        assert!(PathMatch::new("/(", "ImplementationSpecific", true).is_err());
    }

    #[test]
    fn longest_first_and_exact_wins_ties() {
        let mut paths = [
            m("/", "Prefix"),
            m("/foo", "Prefix"),
            m("/api(/|$)(.*)", "ImplementationSpecific"),
            m("/foo", "Exact"),
            m("/foo/bar", "Prefix"),
        ];
        paths.sort_by(PathMatch::precedence);
        let order: Vec<String> = paths
            .iter()
            .map(|p| match p {
                PathMatch::Exact(p) => format!("={p}"),
                PathMatch::Prefix(p) => format!("{p}*"),
                PathMatch::Pattern(r) => format!("~{}", r.as_str()),
            })
            .collect();
        assert_eq!(
            order,
            ["/foo/bar*", "=/foo", "/foo*", "*", "~(?i)^/api(/|$)(.*)"]
        );
    }

    #[test]
    fn rewrites_follow_nginx() {
        let pattern = m("/something(/|$)(.*)", "ImplementationSpecific");
        assert_eq!(pattern.rewrite("/something/new/x", "/$2"), "/new/x");
        assert_eq!(pattern.rewrite("/something", "/$2"), "/");
        assert_eq!(pattern.rewrite("/something/a", "/base/$2?"), "/base/a?");
        // A literal path has no groups: the whole path becomes the target.
        assert_eq!(m("/hello", "Prefix").rewrite("/hello/world", "/"), "/");
        assert_eq!(m("/hello", "Prefix").rewrite("/hello", "app$1"), "/app");
    }
}
