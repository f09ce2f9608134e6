//! A pod's service account tokens, reused until they need refreshing.
//!
//! Why: projected volumes are re-rendered on every volume refresh (seconds apart, so ConfigMap
//! changes show up), and asking the control plane for a fresh token each time cost two reads and
//! a signature per pod every refresh — with 100 pods on a node that was the control plane's
//! largest steady load. Like the kubelet's token manager, a token is reused until 80% of its
//! lifetime has passed (or 24 h, whichever comes first); only then is a new one requested.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Past this share of its lifetime a token is replaced.
const REFRESH_AT: f64 = 0.8;
/// A token older than this is replaced whatever its lifetime.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What a token was asked for; another request gets another token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Request {
    service_account: String,
    audiences: Vec<String>,
    expiration_seconds: i64,
}

#[derive(Clone, Debug)]
struct Issued {
    token: String,
    fetched: SystemTime,
    expires: SystemTime,
}

impl Issued {
    fn needs_refresh(&self, now: SystemTime) -> bool {
        let lifetime = self
            .expires
            .duration_since(self.fetched)
            .unwrap_or_default();
        let refresh_after = lifetime.mul_f64(REFRESH_AT).min(MAX_AGE);
        now.duration_since(self.fetched)
            .map_or(true, |age| age >= refresh_after)
    }
}

/// One pod's tokens (the cache lives and dies with the pod's worker).
#[derive(Default)]
pub(super) struct TokenCache {
    issued: Mutex<HashMap<Request, Issued>>,
}

impl TokenCache {
    /// The cached token for this request, unless it is due for refresh at `now`.
    pub(super) fn get(
        &self,
        service_account: &str,
        audiences: &[String],
        expiration_seconds: i64,
        now: SystemTime,
    ) -> Option<String> {
        let key = request(service_account, audiences, expiration_seconds);
        let issued = self.lock();
        issued
            .get(&key)
            .filter(|i| !i.needs_refresh(now))
            .map(|i| i.token.clone())
    }

    /// Remembers a token fetched at `fetched` that expires at `expires`.
    pub(super) fn put(
        &self,
        service_account: &str,
        audiences: &[String],
        expiration_seconds: i64,
        token: String,
        fetched: SystemTime,
        expires: SystemTime,
    ) {
        let key = request(service_account, audiences, expiration_seconds);
        self.lock().insert(
            key,
            Issued {
                token,
                fetched,
                expires,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Request, Issued>> {
        // Plain data: still valid after a panic elsewhere.
        self.issued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn request(service_account: &str, audiences: &[String], expiration_seconds: i64) -> Request {
    Request {
        service_account: service_account.to_string(),
        audiences: audiences.to_vec(),
        expiration_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_is_reused_until_eighty_percent_of_its_lifetime() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let audiences = vec!["api".to_string()];
        assert_eq!(cache.get("default", &audiences, 3607, t0), None);
        cache.put("default", &audiences, 3607, "a".into(), t0, t0 + HOUR);
        assert_eq!(
            cache.get("default", &audiences, 3607, t0 + Duration::from_secs(10)),
            Some("a".into())
        );
        assert_eq!(
            cache.get("default", &audiences, 3607, t0 + HOUR.mul_f64(0.79)),
            Some("a".into())
        );
        assert_eq!(
            cache.get("default", &audiences, 3607, t0 + HOUR.mul_f64(0.8)),
            None
        );
    }

    #[test]
    fn another_request_gets_another_token() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        cache.put("default", &[], 3607, "a".into(), t0, t0 + HOUR);
        assert_eq!(cache.get("default", &["vault".into()], 3607, t0), None);
        assert_eq!(cache.get("default", &[], 600, t0), None);
        assert_eq!(cache.get("builder", &[], 3607, t0), None);
        assert_eq!(cache.get("default", &[], 3607, t0), Some("a".into()));
    }

    #[test]
    fn long_lived_tokens_are_replaced_after_a_day_and_clock_steps_back_refresh() {
        let cache = TokenCache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        cache.put("default", &[], 0, "a".into(), t0, t0 + HOUR * 24 * 365);
        assert_eq!(
            cache.get("default", &[], 0, t0 + HOUR * 23),
            Some("a".into())
        );
        assert_eq!(cache.get("default", &[], 0, t0 + HOUR * 24), None);
        // A clock that went backwards: better a new token than a stale one.
        assert_eq!(
            cache.get("default", &[], 0, t0 - Duration::from_secs(1)),
            None
        );
    }
}
