//! batch/v1 CronJob: kube-apiserver's defaults, a schedule the controller can parse (five cron
//! fields or a descriptor such as `@hourly` / `@every 90m`), a known time zone, and a job
//! template checked like a Job's spec.

use k8s_openapi::api::batch::v1::CronJob;
use serde_json::Value;

use super::fields::{FieldError, NameRule, human_duration, nonnegative, validate_meta};
use super::job::{JOB_SELECTOR_DOC, validate_job_spec};
use super::pod_template::{default_template, template_cells, template_columns};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct CronJobStrategy;

static INFO: KindInfo = KindInfo {
    group: "batch",
    version: "v1",
    kind: "CronJob",
    resource: "cronjobs",
    singular: "cronjob",
    namespaced: true,
    short_names: &["cj"],
    categories: &["all"],
    tracks_generation: true,
};

/// Job names get an 11-character suffix and must stay within 63.
const MAX_NAME: usize = 52;

const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One cron field's range and names (months count from 1, days of week from 0).
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [CronField; 5] = [
    CronField {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    CronField {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    CronField {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    CronField {
        name: "day of week",
        min: 0,
        max: 6,
        names: DAYS,
    },
];

impl CronField {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("failed to parse int from {s}"))
    }

    /// One comma-separated term: `*`, `?`, `a`, `a-b`, each optionally `/step`.
    fn check_term(&self, term: &str) -> Result<(), String> {
        let (range, step) = match term.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (term, None),
        };
        let (low, high) = match range {
            "*" | "?" => (self.min, self.max),
            _ => match range.split_once('-') {
                Some((a, b)) => (self.value(a)?, self.value(b)?),
                None => {
                    let v = self.value(range)?;
                    (v, if step.is_some() { self.max } else { v })
                }
            },
        };
        if low < self.min {
            return Err(format!(
                "beginning of range ({low}) below minimum ({}): {term}",
                self.min
            ));
        }
        if high > self.max {
            return Err(format!(
                "end of range ({high}) above maximum ({}): {term}",
                self.max
            ));
        }
        if low > high {
            return Err(format!(
                "beginning of range ({low}) beyond end of range ({high}): {term}"
            ));
        }
        match step.map(str::parse::<u32>) {
            None => Ok(()),
            Some(Ok(s)) if s > 0 => Ok(()),
            Some(_) => Err(format!("step of range should be a positive number: {term}")),
        }
    }
}

/// Go's `time.ParseDuration` syntax: one or more `<number><unit>` (`1h30m`, `1.5s`).
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Whether the CronJob controller's parser (robfig/cron's standard parser) accepts `schedule`;
/// the error says why not.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    let trimmed = schedule.trim();
    if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(every) = trimmed.strip_prefix("@every ") {
        return if is_go_duration(every.trim()) {
            Ok(())
        } else {
            Err(format!("failed to parse duration {schedule}"))
        };
    }
    if trimmed.starts_with('@') {
        return if DESCRIPTORS.contains(&trimmed) {
            Ok(())
        } else {
            Err(format!("unrecognized descriptor: {trimmed}"))
        };
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    for (text, field) in fields.iter().zip(&FIELDS) {
        for term in text.split(',') {
            field
                .check_term(term)
                .map_err(|e| format!("{e} ({})", field.name))?;
        }
    }
    Ok(())
}

impl Strategy for CronJobStrategy {
    type Object = CronJob;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, cj: &mut CronJob) {
        let Some(spec) = cj.spec.as_mut() else {
            return;
        };
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        // Only the pod template: kube-apiserver has no defaults for a JobSpec on its own (the
        // Job's come when the controller creates it).
        if let Some(job_spec) = spec.job_template.spec.as_mut() {
            default_template(&mut job_spec.template);
        }
    }

    fn prepare_for_create(&self, cj: &mut CronJob) {
        cj.status = None;
    }

    fn prepare_for_update(&self, new: &mut CronJob, old: &CronJob) {
        new.status = old.status.clone();
    }

    fn validate(&self, cj: &CronJob) -> FieldErrors {
        let mut errors = validate_meta(&cj.metadata, NameRule::Subdomain);
        if let Some(name) = cj.metadata.name.as_deref()
            && name.len() > MAX_NAME
        {
            errors.push(FieldError::invalid(
                "metadata.name",
                name,
                &format!("must be no more than {MAX_NAME} characters"),
            ));
        }
        let Some(spec) = &cj.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        if spec.schedule.is_empty() {
            errors.push(FieldError::required("spec.schedule"));
        } else if let Err(e) = check_schedule(&spec.schedule) {
            errors.push(FieldError::invalid("spec.schedule", &spec.schedule, &e));
        }
        if let Some(tz) = spec.time_zone.as_deref() {
            let problem = if tz.is_empty() {
                Some("timeZone must be nil or non-empty string".to_string())
            } else if tz.eq_ignore_ascii_case("local") {
                Some("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones".into())
            } else {
                jiff::tz::TimeZone::get(tz)
                    .err()
                    .map(|_| format!("unknown time zone {tz}"))
            };
            if let Some(problem) = problem {
                errors.push(FieldError::invalid("spec.timeZone", tz, &problem));
            }
        }
        if let Some(policy) = spec.concurrency_policy.as_deref()
            && !matches!(policy, "Allow" | "Forbid" | "Replace")
        {
            errors.push(FieldError::unsupported(
                "spec.concurrencyPolicy",
                policy,
                &["Allow", "Forbid", "Replace"],
            ));
        }
        for (value, field) in [
            (
                spec.successful_jobs_history_limit,
                "successfulJobsHistoryLimit",
            ),
            (spec.failed_jobs_history_limit, "failedJobsHistoryLimit"),
        ] {
            errors.extend(nonnegative(value, &format!("spec.{field}")));
        }
        errors.extend(nonnegative(
            spec.starting_deadline_seconds,
            "spec.startingDeadlineSeconds",
        ));
        match &spec.job_template.spec {
            Some(job_spec) => errors.extend(validate_job_spec(job_spec, "spec.jobTemplate.spec")),
            None => errors.push(FieldError::required("spec.jobTemplate.spec")),
        }
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new(
                "Schedule",
                "string",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            Column::new(
                "Timezone",
                "string",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
            ),
            Column::new(
                "Suspend",
                "boolean",
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            ),
            Column::new(
                "Active",
                "integer",
                "A list of pointers to currently running jobs.",
            ),
            Column::new(
                "Last Schedule",
                "string",
                "Information when was the last time the job was successfully scheduled.",
            ),
        ];
        columns.extend(template_columns(JOB_SELECTOR_DOC));
        columns
    }

    fn cells(&self, cj: &CronJob, now: jiff::Timestamp) -> Vec<Value> {
        let spec = cj.spec.clone().unwrap_or_default();
        let status = cj.status.clone().unwrap_or_default();
        let suspend = match spec.suspend {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        let last_schedule = status.last_schedule_time.map_or("<none>".into(), |t| {
            human_duration(now.as_second() - t.0.as_second())
        });
        let job_spec = spec.job_template.spec.unwrap_or_default();
        let mut cells = vec![
            Value::String(spec.schedule),
            Value::String(spec.time_zone.unwrap_or_else(|| "<none>".into())),
            Value::String(suspend.into()),
            Value::from(status.active.map_or(0, |a| a.len())),
            Value::String(last_schedule),
        ];
        cells.extend(template_cells(
            Some(&job_spec.template),
            job_spec.selector.as_ref(),
        ));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, column_names, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "tick", "namespace": "default"},
            "spec": {
                "schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "tick", "image": "busybox:1.36"}]
                }}}}
            }
        })
    }

    #[test]
    fn defaults_match_kube() {
        let cj = CronJobStrategy.admit_create(manifest()).expect("admit");
        let spec = &cj["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 1);
        let job_spec = &spec["jobTemplate"]["spec"];
        assert!(job_spec.get("backoffLimit").is_none(), "{job_spec}");
        assert_eq!(job_spec["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn schedules() {
        for ok in [
            "0 0 * * *",
            "*/15 9-17 * * MON-FRI",
            "0 0 1,15 jan,jul ?",
            "@hourly",
            "@annually",
            "@every 1h30m",
        ] {
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * 7",
            "*/0 * * * *",
            "@sometimes",
            "@every soon",
            "TZ=UTC 0 * * * *",
        ] {
            assert!(check_schedule(bad).is_err(), "{bad}");
        }
        let mut bad = manifest();
        bad["spec"]["schedule"] = json!("every minute");
        let errors = create_errors(&CronJobStrategy, bad);
        assert_eq!(errors.0[0].field, "spec.schedule");
    }

    #[test]
    fn table_cells() {
        let mut cj = CronJobStrategy.admit_create(manifest()).expect("admit");
        cj["status"] = json!({"active": [{"name": "tick-1"}]});
        let names = column_names(&CronJobStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let cells = CronJobStrategy.table_cells(&cj, jiff::Timestamp::now());
        assert_eq!(
            cells[1..6],
            [
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("<none>")
            ]
        );
        assert_eq!(cells[9], json!("<none>"));
    }
}
