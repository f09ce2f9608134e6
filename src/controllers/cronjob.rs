//! The CronJob controller: creates a Job from `jobTemplate` at each time `schedule` names,
//! after Kubernetes' cronjob controller v2.
//!
//! Schedules are parsed by `backup::cron` (five fields, `@hourly` and friends, `@every`),
//! the parser scheduled backups use; the CronJob strategy has already checked the syntax
//! robfig/cron accepts. Times are computed in `spec.timeZone` (UTC by default) by shifting
//! to local wall-clock seconds and back.
//!
//! One reconcile:
//! 1. the Jobs this CronJob controls: the unfinished ones are `status.active`; finished ones
//!    beyond successfulJobsHistoryLimit (default 3) / failedJobsHistoryLimit (default 1) are
//!    deleted, oldest first, with Background propagation;
//! 2. unless suspended: the latest scheduled time not yet run, after lastScheduleTime (or the
//!    CronJob's creation) and no further back than startingDeadlineSeconds;
//! 3. concurrencyPolicy: Allow runs it, Forbid waits while a Job is active (the time stays
//!    due until the deadline passes), Replace deletes the active Jobs first;
//! 4. create the Job `<cronjob>-<scheduled unix minutes>` (a name per scheduled time, so a
//!    retried reconcile cannot run one time twice), then write lastScheduleTime and active;
//! 5. look again at the next scheduled time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::informer::{Informer, Informers};
use super::job::is_finished;
use super::ownership::{controller_reference, enqueue_controller, enqueue_self, is_deleting};
use super::queue::WorkQueue;
use super::recorder::{EventType, Recorder};
use super::workloads::{controlled_by, live, write_status};
use super::{Action, Error, Reconcile};
use crate::apiserver::objects::{Objects, Scope, name_of};
use crate::apiserver::status::ApiError;
use crate::backup::cron::Schedule;
use crate::json_path::JsonPath;
use crate::registry::Kind;

/// At most this many missed times are walked through to find the latest (kube warns at 100).
const MAX_MISSED: usize = 1000;

/// The scheduled time to run now (seconds since the epoch), if one is due, and the next one.
/// `offset` gives the time zone's UTC offset in seconds at an instant.
pub fn due_times(
    schedule: &Schedule,
    earliest: i64,
    now: i64,
    offset: &dyn Fn(i64) -> i64,
) -> (Option<i64>, Option<i64>) {
    // Walk in local wall-clock seconds, where the cron fields apply.
    let to_utc = |local: i64| local - offset(local - offset(local));
    let mut due = None;
    let mut next = schedule.next_after(earliest + offset(earliest)).map(to_utc);
    let mut walked = 0;
    while let Some(t) = next {
        if t > now || walked >= MAX_MISSED {
            break;
        }
        due = Some(t);
        walked += 1;
        next = schedule.next_after(t + offset(t)).map(to_utc);
    }
    (due, next)
}

pub fn job_name(cronjob: &str, scheduled: i64) -> String {
    format!("{cronjob}-{}", scheduled.div_euclid(60))
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn unix_at(object: &Value, pointer: &str) -> Option<i64> {
    object
        .at(pointer)
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

fn job_succeeded(job: &Value) -> bool {
    job.at("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type") == Some(&json!("Complete")) && c.get("status") == Some(&json!("True"))
        })
}

/// The Job for the time `scheduled`.
pub fn job_for(cronjob: &Value, info: &crate::registry::KindInfo, scheduled: i64) -> Value {
    let template = cronjob
        .at("/spec/jobTemplate")
        .cloned()
        .unwrap_or(json!({}));
    let mut meta = json!({
        "name": job_name(name_of(cronjob), scheduled),
        "ownerReferences": [controller_reference(cronjob, info)],
        "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": rfc3339(scheduled)},
    });
    if let Some(labels) = template.at("/metadata/labels") {
        meta["labels"] = labels.clone();
    }
    if let Some(Value::Object(annotations)) = template.at("/metadata/annotations") {
        for (k, v) in annotations {
            meta["annotations"][k] = v.clone();
        }
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

fn reference(job: &Value) -> Value {
    let meta = |f: &str| {
        job.at(&format!("/metadata/{f}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta("name"),
        "namespace": meta("namespace"), "uid": meta("uid"), "resourceVersion": meta("resourceVersion")})
}

pub struct CronJobController {
    objects: Objects,
    cronjob_kind: &'static dyn Kind,
    job_kind: &'static dyn Kind,
    cronjobs: Arc<Informer>,
    jobs: Arc<Informer>,
    recorder: Recorder,
}

impl CronJobController {
    pub fn new(
        objects: Objects,
        informers: &Informers,
        cronjob_kind: &'static dyn Kind,
        job_kind: &'static dyn Kind,
    ) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = Arc::new(WorkQueue::default());
        let cronjobs = informers.of(cronjob_kind);
        let jobs = informers.of(job_kind);
        cronjobs.add_handler(enqueue_self(queue.clone()));
        // Jobs have no selector-based adoption here: only controlled Jobs map to a CronJob.
        jobs.add_handler(enqueue_controller(queue.clone(), cronjobs.clone()));
        let controller = Arc::new(CronJobController {
            recorder: Recorder::new(objects.clone(), "cronjob-controller"),
            objects,
            cronjob_kind,
            job_kind,
            cronjobs,
            jobs,
        });
        (controller, queue)
    }

    async fn delete_job(&self, cronjob: &Value, job: &Value) -> Result<(), Error> {
        let message = format!("Deleted job {}", name_of(job));
        let background = Some("Background");
        self.recorder
            .delete_dependent(cronjob, self.job_kind, job, background, &message)
            .await?;
        Ok(())
    }

    /// Step 1, history: deletes the oldest finished Jobs beyond the limits.
    async fn trim_history(&self, cronjob: &Value, finished: &[Arc<Value>]) -> Result<(), Error> {
        let limit = |f: &str, default: i64| {
            cronjob
                .at(&format!("/spec/{f}"))
                .and_then(Value::as_i64)
                .unwrap_or(default)
                .max(0) as usize
        };
        for (succeeded, limit) in [
            (true, limit("successfulJobsHistoryLimit", 3)),
            (false, limit("failedJobsHistoryLimit", 1)),
        ] {
            let mut group: Vec<&Arc<Value>> = finished
                .iter()
                .filter(|j| job_succeeded(j) == succeeded)
                .collect();
            group.sort_by_key(|j| {
                (
                    unix_at(j, "/status/completionTime")
                        .or_else(|| unix_at(j, "/metadata/creationTimestamp")),
                    name_of(j).to_string(),
                )
            });
            if group.len() > limit {
                let surplus = group.len() - limit;
                for job in group.into_iter().take(surplus) {
                    self.delete_job(cronjob, job).await?;
                }
            }
        }
        Ok(())
    }

    async fn update_status(
        &self,
        cronjob: &Value,
        active: &[Value],
        last_schedule: Option<i64>,
        last_success: Option<i64>,
    ) -> Result<(), Error> {
        let mut status = cronjob
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        if active.is_empty() {
            if let Some(s) = status.as_object_mut() {
                s.remove("active");
            }
        } else {
            status["active"] = json!(active);
        }
        if let Some(t) = last_schedule {
            status["lastScheduleTime"] = json!(rfc3339(t));
        }
        if let Some(t) = last_success {
            status["lastSuccessfulTime"] = json!(rfc3339(t));
        }
        write_status(&self.objects, self.cronjob_kind, cronjob, status).await?;
        Ok(())
    }
}

impl Reconcile for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some((cronjob, namespace)) = live(&self.cronjobs, key) else {
            return Ok(Action::Done);
        };
        let namespace = namespace.as_str();
        let mut owned = controlled_by(&self.jobs, &cronjob);
        owned.retain(|j| !is_deleting(j));
        let (finished, running): (Vec<Arc<Value>>, Vec<Arc<Value>>) =
            owned.into_iter().partition(|j| is_finished(j));
        self.trim_history(&cronjob, &finished).await?;
        let last_success = finished
            .iter()
            .filter(|j| job_succeeded(j))
            .filter_map(|j| unix_at(j, "/status/completionTime"))
            .max();
        let mut active: Vec<Value> = running.iter().map(|j| reference(j)).collect();
        let spec = |f: &str| cronjob.at(&format!("/spec/{f}"));
        if spec("suspend") == Some(&json!(true)) {
            self.update_status(&cronjob, &active, None, last_success)
                .await?;
            return Ok(Action::Done);
        }
        let text = spec("schedule").and_then(Value::as_str).unwrap_or("");
        let schedule: Schedule = match text.parse() {
            Ok(s) => s,
            Err(e) => {
                let message = format!("unparseable schedule {text:?}: {e}");
                self.recorder
                    .record(
                        &cronjob,
                        EventType::Warning,
                        "UnparseableSchedule",
                        &message,
                    )
                    .await;
                return Ok(Action::Done);
            }
        };
        let zone = match spec("timeZone").and_then(Value::as_str) {
            Some(name) => match jiff::tz::TimeZone::get(name) {
                Ok(zone) => zone,
                Err(_) => {
                    let message = format!("invalid timeZone: {name:?}");
                    self.recorder
                        .record(&cronjob, EventType::Warning, "UnknownTimeZone", &message)
                        .await;
                    return Ok(Action::Done);
                }
            },
            None => jiff::tz::TimeZone::UTC,
        };
        let offset = |unix: i64| {
            jiff::Timestamp::from_second(unix)
                .map(|t| i64::from(zone.to_offset(t).seconds()))
                .unwrap_or(0)
        };
        let now = jiff::Timestamp::now().as_second();
        let mut earliest = unix_at(&cronjob, "/status/lastScheduleTime")
            .or_else(|| unix_at(&cronjob, "/metadata/creationTimestamp"))
            .unwrap_or(now);
        let starting_deadline = spec("startingDeadlineSeconds").and_then(Value::as_i64);
        if let Some(deadline) = starting_deadline {
            earliest = earliest.max(now - deadline);
        }
        let (due, next) = due_times(&schedule, earliest, now, &offset);
        let requeue = |next: Option<i64>| match next {
            Some(t) => Action::RequeueAfter(
                Duration::from_secs((t - now).max(0) as u64) + Duration::from_millis(100),
            ),
            None => Action::Done,
        };
        let Some(scheduled) = due else {
            self.update_status(&cronjob, &active, None, last_success)
                .await?;
            return Ok(requeue(next));
        };
        let policy = spec("concurrencyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        if policy == "Forbid" && !running.is_empty() {
            tracing::debug!("a job is still active; concurrencyPolicy Forbid waits");
            self.update_status(&cronjob, &active, None, last_success)
                .await?;
            // A finishing Job queues this CronJob again; else look again at the next time.
            return Ok(requeue(next));
        }
        if policy == "Replace" {
            for job in &running {
                self.delete_job(&cronjob, job).await?;
            }
            active.clear();
        }
        let job = job_for(&cronjob, self.cronjob_kind.info(), scheduled);
        let scope = Scope::new(self.job_kind, Some(namespace));
        match self.objects.create(scope, job, false).await {
            Ok(created) => {
                tracing::info!(job = name_of(&created), "created a scheduled job");
                let message = format!("Created job {}", name_of(&created));
                self.recorder
                    .record(&cronjob, EventType::Normal, "SuccessfulCreate", &message)
                    .await;
                active.push(reference(&created));
            }
            // Made by an earlier attempt whose status write was lost.
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.update_status(&cronjob, &active, Some(scheduled), last_success)
            .await?;
        Ok(requeue(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or(0)
    }

    #[test]
    fn the_latest_missed_time_runs_and_the_next_is_known() {
        let every_minute: Schedule = "*/1 * * * *".parse().expect("cron");
        let zero = |_: i64| 0;
        let (due, next) = due_times(
            &every_minute,
            utc("2026-01-01T00:00:10Z"),
            utc("2026-01-01T00:03:30Z"),
            &zero,
        );
        assert_eq!(due, Some(utc("2026-01-01T00:03:00Z")));
        assert_eq!(next, Some(utc("2026-01-01T00:04:00Z")));
        let (due, _) = due_times(
            &every_minute,
            utc("2026-01-01T00:03:00Z"),
            utc("2026-01-01T00:03:30Z"),
            &zero,
        );
        assert_eq!(due, None);
        let hourly: Schedule = "@hourly".parse().expect("cron");
        let (due, next) = due_times(
            &hourly,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:59:00Z"),
            &zero,
        );
        assert_eq!((due, next), (None, Some(utc("2026-01-01T01:00:00Z"))));
    }

    #[test]
    fn time_zones_shift_the_wall_clock() {
        // 09:00 every day in a zone two hours ahead of UTC is 07:00 UTC.
        let nine: Schedule = "0 9 * * *".parse().expect("cron");
        let plus_two = |_: i64| 7200;
        let (due, next) = due_times(
            &nine,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T08:00:00Z"),
            &plus_two,
        );
        assert_eq!(due, Some(utc("2026-01-01T07:00:00Z")));
        assert_eq!(next, Some(utc("2026-01-02T07:00:00Z")));
    }

    #[test]
    fn jobs_are_named_by_scheduled_minute_and_owned() {
        let info = crate::registry::lookup("batch", "v1", "cronjobs")
            .expect("kind")
            .info();
        let cj = json!({"metadata": {"name": "tick", "uid": "u1"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {"containers": []}}}}}});
        let t = utc("2026-01-01T00:03:00Z");
        let job = job_for(&cj, info, t);
        assert_eq!(job["metadata"]["name"], format!("tick-{}", t / 60));
        assert_eq!(job["metadata"]["labels"]["app"], "tick");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(
            job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"],
            "2026-01-01T00:03:00Z"
        );
    }
}
