//! The Job controller: runs pods until `completions` of them succeeded, at most `parallelism`
//! at once, after Kubernetes' job controller (NonIndexed completion mode).
//!
//! One reconcile:
//! 1. count the Job's pods: active (not finished, not deleting), ready, succeeded, failed
//!    (with restartPolicy OnFailure a container restart is a failure too, as the kubelet
//!    restarting it in place is the retry);
//! 2. decide: complete once enough pods succeeded (without `completions`: once one succeeded
//!    and none is active); failed once failures exceed `backoffLimit` (default 6) or the Job
//!    has been active longer than `activeDeadlineSeconds` (then its active pods are deleted);
//!    otherwise run `min(parallelism, completions - succeeded)` pods, creating the missing
//!    ones only after the failure backoff (10 s doubling per failure up to 6 min; the base is
//!    a field so tests can shorten it) and only once the cache shows earlier creates;
//! 3. write status (active, ready, succeeded, failed, startTime, completionTime, the
//!    Complete/Failed condition) when it changed, with an event for each step;
//! 4. a finished Job with `ttlSecondsAfterFinished` is deleted (Background propagation: the
//!    garbage collector removes its pods) once that many seconds passed.
//!
//! Not yet: Indexed completion mode, podFailurePolicy, successPolicy, suspend, pod-tracking
//! finalizers (a finished pod deleted by hand is forgotten from the counts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::expectations::Expectations;
use super::informer::{Informer, Informers, uid_of};
use super::ownership::{enqueue_controller, enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::replicaset::{is_active, is_ready};
use super::scheduler::set_condition;
use super::templates::{pod_from_template, written_revision};
use super::workloads::{controlled_by, live, write_status};
use super::{Action, Error, Reconcile};
use crate::apiserver::objects::{DeleteOptions, Objects, Scope, name_of, now_rfc3339};
use crate::apiserver::status::ApiError;
use crate::json_path::JsonPath;
use crate::registry::Kind;

/// Kubernetes' DefaultJobPodFailureBackOff and MaxJobPodFailureBackOff.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(360);
const DEFAULT_BACKOFF_LIMIT: i64 = 6;
/// How long to wait for the cache before looking again when expectations are unmet.
const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(5);

/// The pods of a Job, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: i64,
    pub ready: i64,
    pub succeeded: i64,
    pub failed: i64,
}

fn phase(pod: &Value) -> &str {
    pod.at("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

pub fn count(pods: &[Arc<Value>], on_failure: bool) -> Counts {
    let mut c = Counts::default();
    for pod in pods {
        match phase(pod) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if is_active(pod) => {
                c.active += 1;
                c.ready += i64::from(is_ready(pod));
            }
            _ => {}
        }
        if on_failure {
            c.failed += pod
                .at("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                .sum::<i64>();
        }
    }
    c
}

/// What the Job should be doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Failed {
        reason: &'static str,
        message: &'static str,
    },
    /// Keep this many pods active.
    Run {
        active: i64,
    },
}

/// Step 2: the decision from the spec, the counts and how long the Job has been active.
pub fn outcome(job: &Value, counts: Counts, active_for: Duration) -> Outcome {
    let spec = |f: &str| job.at(&format!("/spec/{f}")).and_then(Value::as_i64);
    let completions = spec("completions");
    let parallelism = spec("parallelism").unwrap_or(1).max(0);
    let done = match completions {
        Some(c) => counts.succeeded >= c,
        None => counts.succeeded > 0 && counts.active == 0,
    };
    if done {
        return Outcome::Complete;
    }
    if counts.failed > spec("backoffLimit").unwrap_or(DEFAULT_BACKOFF_LIMIT) {
        return Outcome::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if spec("activeDeadlineSeconds").is_some_and(|d| active_for.as_secs() as i64 >= d) {
        return Outcome::Failed {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        };
    }
    let active = match completions {
        Some(c) => parallelism.min(c - counts.succeeded),
        // Work-queue Jobs: once one pod succeeded the others finish on their own.
        None if counts.succeeded > 0 => counts.active.min(parallelism),
        None => parallelism,
    };
    Outcome::Run {
        active: active.max(0),
    }
}

/// The wait before a new pod after `failures` failures: base * 2^(failures-1), capped.
pub fn failure_backoff(base: Duration, failures: i64) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((failures - 1).min(30) as u32);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

fn condition_true(job: &Value, kind: &str) -> bool {
    job.at("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type") == Some(&json!(kind)) && c.get("status") == Some(&json!("True")))
}

pub fn is_finished(job: &Value) -> bool {
    condition_true(job, "Complete") || condition_true(job, "Failed")
}

fn timestamp(value: &Value, pointer: &str) -> Option<jiff::Timestamp> {
    value
        .at(pointer)
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
}

/// When a finished Job finished: completionTime, or its Failed condition's transition.
fn finished_at(job: &Value) -> Option<jiff::Timestamp> {
    timestamp(job, "/status/completionTime").or_else(|| {
        job.at("/status/conditions")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c.get("type") == Some(&json!("Failed")))
            .and_then(|c| timestamp(c, "/lastTransitionTime"))
    })
}

pub struct JobController {
    objects: Objects,
    job_kind: &'static dyn Kind,
    pod_kind: &'static dyn Kind,
    jobs: Arc<Informer>,
    pods: Arc<Informer>,
    expectations: Expectations,
    recorder: Recorder,
    backoff_base: Duration,
    /// Per Job: the failures last seen and when their count last grew (the backoff's start).
    failures: Mutex<HashMap<String, (i64, Instant)>>,
}

impl JobController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        job_kind: &'static dyn Kind,
        pod_kind: &'static dyn Kind,
        backoff_base: Duration,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let jobs = informers.of(job_kind);
        let pods = informers.of(pod_kind);
        jobs.add_handler(enqueue_self(queue.clone()));
        pods.add_handler(enqueue_controller(queue.clone(), jobs.clone()));
        let controller = Arc::new(JobController {
            recorder: Recorder::new(objects.clone(), "job-controller"),
            objects,
            job_kind,
            pod_kind,
            jobs,
            pods,
            expectations: Expectations::default(),
            backoff_base,
            failures: Mutex::new(HashMap::new()),
        });
        (controller, queue)
    }

    /// How long a new pod must still wait after the last failure (zero: create now).
    fn backoff_remaining(&self, key: &str, failed: i64) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failures
            .entry(key.to_string())
            .or_insert((0, Instant::now()));
        if failed > entry.0 {
            *entry = (failed, Instant::now());
        }
        failure_backoff(self.backoff_base, failed).saturating_sub(entry.1.elapsed())
    }

    async fn delete_pods(&self, job: &Value, key: &str, pods: &[Arc<Value>]) -> Result<(), Error> {
        for pod in pods {
            self.expectations.deleted(key, uid_of(pod));
            let message = format!("Deleted pod: {}", name_of(pod));
            self.recorder
                .delete_dependent(job, self.pod_kind, pod, None, &message)
                .await?;
        }
        Ok(())
    }

    async fn create_pods(
        &self,
        job: &Value,
        namespace: &str,
        key: &str,
        count: i64,
    ) -> Result<(), Error> {
        let template = job.at("/spec/template").cloned().unwrap_or(Value::Null);
        let mut pod = pod_from_template(job, self.job_kind.info(), &template)?;
        pod["metadata"]["generateName"] = json!(format!("{}-", name_of(job)));
        let scope = Scope::new(self.pod_kind, Some(namespace));
        for _ in 0..count {
            let created = self.objects.create(scope, pod.clone(), false).await?;
            self.expectations.created(key, written_revision(&created));
            let message = format!("Created pod: {}", name_of(&created));
            self.recorder
                .record(job, EventType::Normal, "SuccessfulCreate", &message)
                .await;
        }
        Ok(())
    }

    /// Step 4: deletes a finished Job whose TTL ran out, or says when to look again.
    async fn expire(&self, job: &Value, namespace: &str) -> Result<Action, Error> {
        let Some(ttl) = job
            .at("/spec/ttlSecondsAfterFinished")
            .and_then(Value::as_i64)
        else {
            return Ok(Action::Done);
        };
        let finished = finished_at(job).unwrap_or_else(jiff::Timestamp::now);
        let due = finished + jiff::SignedDuration::from_secs(ttl.max(0));
        let now = jiff::Timestamp::now();
        if due > now {
            let wait = due.duration_since(now).as_millis().max(0) as u64;
            return Ok(Action::RequeueAfter(Duration::from_millis(wait + 10)));
        }
        tracing::info!("deleting a finished job after its TTL");
        let options = DeleteOptions {
            uid: Some(uid_of(job).to_string()),
            propagation_policy: Some("Background".into()),
            ..DeleteOptions::default()
        };
        match self
            .objects
            .delete(
                Scope::new(self.job_kind, Some(namespace)),
                name_of(job),
                &options,
            )
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(Action::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// Step 3.
    async fn update_status(
        &self,
        job: &Value,
        counts: Counts,
        start: &str,
        outcome: &Outcome,
    ) -> Result<(), Error> {
        let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
        let active = match outcome {
            Outcome::Run { .. } => counts.active,
            _ => 0,
        };
        for (field, value) in [
            ("active", active),
            ("ready", counts.ready),
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
        ] {
            if value == 0 && field != "ready" {
                if let Some(s) = status.as_object_mut() {
                    s.remove(field);
                }
            } else {
                status[field] = json!(value);
            }
        }
        status["startTime"] = json!(start);
        let now = now_rfc3339();
        let condition = |kind: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": now, "lastTransitionTime": now})
        };
        let mut wrapper = json!({"status": status});
        if !is_finished(job) {
            match outcome {
                Outcome::Complete => {
                    wrapper["status"]["completionTime"] = json!(now);
                    set_condition(
                        &mut wrapper,
                        condition(
                            "Complete",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ),
                    );
                }
                Outcome::Failed { reason, message } => {
                    set_condition(&mut wrapper, condition("Failed", reason, message));
                }
                Outcome::Run { .. } => {}
            }
        }
        let status = wrapper["status"].take();
        if job.get("status") == Some(&status) {
            return Ok(());
        }
        write_status(&self.objects, self.job_kind, job, status).await?;
        match outcome {
            Outcome::Complete if !is_finished(job) => {
                self.recorder
                    .record(job, EventType::Normal, "Completed", "Job completed")
                    .await;
            }
            Outcome::Failed { reason, message } if !is_finished(job) => {
                self.recorder
                    .record(job, EventType::Warning, reason, message)
                    .await;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Reconcile for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some((job, namespace)) = live(&self.jobs, key) else {
            self.expectations.forget(key);
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            return Ok(Action::Done);
        };
        let namespace = namespace.as_str();
        let pods = controlled_by(&self.pods, &job);
        let on_failure = job.at("/spec/template/spec/restartPolicy") == Some(&json!("OnFailure"));
        let counts = count(&pods, on_failure);
        let active: Vec<Arc<Value>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
        if is_finished(&job) {
            // A Job that failed stops its pods; one that completed has none left running.
            self.delete_pods(&job, key, &active).await?;
            return self.expire(&job, namespace).await;
        }
        let start = job
            .at("/status/startTime")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        let started: jiff::Timestamp = start.parse().unwrap_or_else(|_| jiff::Timestamp::now());
        let active_for = jiff::Timestamp::now()
            .duration_since(started)
            .as_millis()
            .max(0) as u64;
        let decision = outcome(&job, counts, Duration::from_millis(active_for));
        let satisfied = self
            .expectations
            .satisfied(key, self.pods.revision(), |uid| {
                self.pods.get_by_uid(uid).is_some_and(|p| !is_deleting(&p))
            });
        let mut next = Action::Done;
        match &decision {
            Outcome::Complete | Outcome::Failed { .. } => {
                self.delete_pods(&job, key, &active).await?;
            }
            Outcome::Run { .. } if !satisfied => {
                next = Action::RequeueAfter(EXPECTATIONS_RECHECK);
            }
            Outcome::Run { active: want } => {
                let have = counts.active;
                if have < *want {
                    let wait = self.backoff_remaining(key, counts.failed);
                    if wait.is_zero() {
                        tracing::info!(creating = want - have, "starting pods");
                        self.create_pods(&job, namespace, key, want - have).await?;
                    } else {
                        next = Action::RequeueAfter(wait);
                    }
                } else if have > *want {
                    let surplus =
                        super::replicaset::pods_to_delete(&active, (have - want) as usize);
                    self.delete_pods(&job, key, &surplus).await?;
                }
            }
        }
        self.update_status(&job, counts, &start, &decision).await?;
        if let (Action::Done, Outcome::Run { .. }) = (next, &decision)
            && let Some(deadline) = job
                .at("/spec/activeDeadlineSeconds")
                .and_then(Value::as_u64)
        {
            let left =
                Duration::from_secs(deadline).saturating_sub(Duration::from_millis(active_for));
            next = Action::RequeueAfter(left + Duration::from_millis(10));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "pi"}, "spec": spec})
    }

    fn counts(active: i64, succeeded: i64, failed: i64) -> Counts {
        Counts {
            active,
            ready: 0,
            succeeded,
            failed,
        }
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(json!({"completions": 5, "parallelism": 2}));
        let zero = Duration::ZERO;
        assert_eq!(
            outcome(&j, counts(0, 0, 0), zero),
            Outcome::Run { active: 2 }
        );
        assert_eq!(
            outcome(&j, counts(2, 4, 0), zero),
            Outcome::Run { active: 1 }
        );
        assert_eq!(outcome(&j, counts(0, 5, 0), zero), Outcome::Complete);
        let queue = job(json!({"parallelism": 3}));
        assert_eq!(
            outcome(&queue, counts(0, 0, 0), zero),
            Outcome::Run { active: 3 }
        );
        assert_eq!(
            outcome(&queue, counts(2, 1, 0), zero),
            Outcome::Run { active: 2 }
        );
        assert_eq!(outcome(&queue, counts(0, 1, 0), zero), Outcome::Complete);
    }

    #[test]
    fn fails_past_the_backoff_limit_or_the_deadline() {
        let j = job(json!({"completions": 1, "backoffLimit": 2, "activeDeadlineSeconds": 30}));
        assert_eq!(
            outcome(&j, counts(1, 0, 2), Duration::ZERO),
            Outcome::Run { active: 1 }
        );
        assert!(matches!(
            outcome(&j, counts(0, 0, 3), Duration::ZERO),
            Outcome::Failed {
                reason: "BackoffLimitExceeded",
                ..
            }
        ));
        assert!(matches!(
            outcome(&j, counts(1, 0, 0), Duration::from_secs(30)),
            Outcome::Failed {
                reason: "DeadlineExceeded",
                ..
            }
        ));
    }

    #[test]
    fn failure_backoff_doubles_up_to_six_minutes() {
        let base = DEFAULT_BACKOFF_BASE;
        assert_eq!(failure_backoff(base, 0), Duration::ZERO);
        assert_eq!(failure_backoff(base, 1), Duration::from_secs(10));
        assert_eq!(failure_backoff(base, 3), Duration::from_secs(40));
        assert_eq!(failure_backoff(base, 10), MAX_BACKOFF);
        assert_eq!(
            failure_backoff(Duration::from_millis(1), 2),
            Duration::from_millis(2)
        );
    }

    #[test]
    fn pods_are_counted_by_phase_and_restarts_count_for_on_failure() {
        let pod = |phase: &str, restarts: i64| {
            Arc::new(json!({"status": {"phase": phase,
                "containerStatuses": [{"restartCount": restarts}]}}))
        };
        let pods = vec![
            pod("Running", 2),
            pod("Succeeded", 0),
            pod("Failed", 0),
            pod("Pending", 0),
        ];
        assert_eq!(count(&pods, false), counts(2, 1, 1));
        assert_eq!(count(&pods, true), counts(2, 1, 3));
    }

    #[test]
    fn finished_jobs_know_when() {
        let j = json!({"status": {"completionTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(is_finished(&j));
        assert_eq!(finished_at(&j), "2026-01-01T00:00:00Z".parse().ok());
        assert!(!is_finished(&json!({})));
    }
}
