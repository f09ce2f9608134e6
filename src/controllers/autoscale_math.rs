//! The arithmetic of the HorizontalPodAutoscaler, as kube-controller-manager does it, kept
//! apart from the controller so it is tested on its own:
//! - a metric's proposal is `ceil(current_value / target_value * pods)`, unless the ratio is
//!   within the 10% tolerance (then the replica count stays);
//! - proposals are stabilised over windows (scale-up takes the smallest recommendation of its
//!   window, scale-down the largest of its window: 5 minutes by default, so a brief dip does
//!   not remove pods);
//! - a change is limited by the direction's policies (Pods / Percent, picked by selectPolicy);
//! - the result is clamped to [minReplicas, maxReplicas].

use std::time::{Duration, Instant};

use serde_json::Value;

/// kube's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;

/// What one metric measured, as a ratio against its target, over `pods` pods with metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub ratio: f64,
    pub pods: usize,
}

/// The replica count one metric asks for.
pub fn proposal(current: i32, measured: Measured) -> i32 {
    if (measured.ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    (measured.ratio * measured.pods as f64).ceil() as i32
}

/// Recommendations of one autoscaler over time (kube keeps them per HPA too).
#[derive(Default)]
pub struct Recommendations {
    history: Vec<(Instant, i32)>,
}

impl Recommendations {
    /// Records `proposed` and returns it stabilised against the windows.
    pub fn stabilize(
        &mut self,
        now: Instant,
        current: i32,
        proposed: i32,
        up_window: Duration,
        down_window: Duration,
    ) -> i32 {
        self.history.push((now, proposed));
        let longest = up_window.max(down_window);
        self.history
            .retain(|(at, _)| now.saturating_duration_since(*at) <= longest);
        let within = |window: Duration| {
            self.history
                .iter()
                .filter(move |(at, _)| now.saturating_duration_since(*at) <= window)
                .map(|(_, r)| *r)
        };
        let up = within(up_window).min().unwrap_or(proposed);
        let down = within(down_window).max().unwrap_or(proposed);
        let mut stabilized = current;
        if stabilized < up {
            stabilized = up;
        }
        if stabilized > down {
            stabilized = down;
        }
        stabilized
    }
}

/// How far one step may go from `current` under a direction's rules (`spec.behavior.scaleUp`
/// or `.scaleDown`): the bound each policy allows, picked by selectPolicy (Max by default;
/// Disabled: no change).
pub fn policy_bound(rules: Option<&Value>, current: i32, up: bool) -> i32 {
    let select = rules
        .and_then(|r| r.get("selectPolicy"))
        .and_then(Value::as_str)
        .unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let defaults: Vec<(String, i64)> = if up {
        vec![("Percent".into(), 100), ("Pods".into(), 4)]
    } else {
        vec![("Percent".into(), 100)]
    };
    let policies: Vec<(String, i64)> = rules
        .and_then(|r| r.get("policies"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|p| {
                    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                    (
                        kind.to_string(),
                        p.get("value").and_then(Value::as_i64).unwrap_or(0),
                    )
                })
                .collect()
        })
        .filter(|list: &Vec<(String, i64)>| !list.is_empty())
        .unwrap_or(defaults);
    let current = i64::from(current);
    let bounds = policies.iter().map(|(kind, value)| {
        // Percent rounds towards more pods, as kube's does: up by ceil, down by floor.
        let change = match kind.as_str() {
            "Pods" => *value,
            _ if up => (current * value + 99).div_euclid(100),
            _ => (current * value).div_euclid(100),
        };
        if up {
            current + change
        } else {
            current - change
        }
    });
    let bound = if (select == "Min") == up {
        bounds.min()
    } else {
        bounds.max()
    };
    bound.unwrap_or(current).clamp(0, i64::from(i32::MAX)) as i32
}

/// Whether `[min, max]` cut the wanted count, and the count in range.
pub fn clamp(wanted: i32, min: i32, max: i32) -> (i32, Option<&'static str>) {
    if wanted > max {
        (max, Some("TooManyReplicas"))
    } else if wanted < min {
        (min, Some("TooFewReplicas"))
    } else {
        (wanted, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proposals_follow_the_ratio_outside_the_tolerance() {
        let m = |ratio, pods| Measured { ratio, pods };
        assert_eq!(proposal(3, m(1.05, 3)), 3, "within 10%: no change");
        assert_eq!(proposal(3, m(2.0, 3)), 6);
        assert_eq!(proposal(4, m(0.3, 4)), 2, "ceil(1.2)");
        assert_eq!(proposal(1, m(5.0, 1)), 5);
    }

    #[test]
    fn scale_down_waits_for_its_window_and_scale_up_does_not() {
        let start = Instant::now();
        let (up, down) = (Duration::ZERO, Duration::from_secs(300));
        let mut r = Recommendations::default();
        assert_eq!(r.stabilize(start, 2, 6, up, down), 6);
        let later = start + Duration::from_secs(60);
        assert_eq!(
            r.stabilize(later, 6, 2, up, down),
            6,
            "a dip within 5 minutes keeps the pods"
        );
        let much_later = start + Duration::from_secs(400);
        assert_eq!(r.stabilize(much_later, 6, 2, up, down), 2);
    }

    #[test]
    fn policies_limit_one_step() {
        assert_eq!(policy_bound(None, 2, true), 6, "max(2*2, 2+4)");
        assert_eq!(policy_bound(None, 10, true), 20);
        assert_eq!(policy_bound(None, 10, false), 0);
        let pods_one = json!({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]});
        assert_eq!(policy_bound(Some(&pods_one), 10, false), 9);
        let half = json!({"policies": [{"type": "Percent", "value": 50}]});
        assert_eq!(policy_bound(Some(&half), 3, false), 2, "3 - floor(1.5)");
        assert_eq!(policy_bound(Some(&half), 3, true), 5, "3 + ceil(1.5)");
        let disabled = json!({"selectPolicy": "Disabled"});
        assert_eq!(policy_bound(Some(&disabled), 10, true), 10);
        let min = json!({"selectPolicy": "Min", "policies": [
            {"type": "Pods", "value": 1}, {"type": "Percent", "value": 50}]});
        assert_eq!(policy_bound(Some(&min), 10, true), 11);
    }

    #[test]
    fn limits_clamp_and_say_which() {
        assert_eq!(clamp(12, 1, 10), (10, Some("TooManyReplicas")));
        assert_eq!(clamp(0, 1, 10), (1, Some("TooFewReplicas")));
        assert_eq!(clamp(5, 1, 10), (5, None));
    }
}
