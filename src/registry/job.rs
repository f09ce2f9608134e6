//! batch/v1 Job: kube-apiserver's defaults, a server-generated selector on the Job's uid (unless
//! `manualSelector`), pods that restart never or on failure, a template and selector that do
//! not change, and STATUS / COMPLETIONS / DURATION as kubectl prints them.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::fields::{FieldError, NameRule, human_duration, immutable, nonnegative, validate_meta};
use super::pod_template::{
    RestartRule, default_template, format_selector, template_cells, template_columns,
    validate_selector, validate_selector_unchanged, validate_template,
};
use super::{Column, FieldErrors, KindInfo, Strategy};

pub struct JobStrategy;

static INFO: KindInfo = KindInfo {
    group: "batch",
    version: "v1",
    kind: "Job",
    resource: "jobs",
    singular: "job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    tracks_generation: true,
};

pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// kube-apiserver's Job defaults (a CronJob's job template gets none of them).
fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    let backoff = if spec.backoff_limit_per_index.is_some() {
        i32::MAX
    } else {
        6
    };
    spec.backoff_limit.get_or_insert(backoff);
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    let replacement = if spec.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.pod_replacement_policy
        .get_or_insert_with(|| replacement.into());
    default_template(&mut spec.template);
}

/// Checks a job spec at `path` ("spec", or "spec.jobTemplate.spec" in a CronJob).
pub fn validate_job_spec(spec: &JobSpec, path: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    for (value, field) in [
        (spec.parallelism, "parallelism"),
        (spec.completions, "completions"),
        (spec.backoff_limit, "backoffLimit"),
        (spec.ttl_seconds_after_finished, "ttlSecondsAfterFinished"),
    ] {
        errors.extend(nonnegative(value, &format!("{path}.{field}")));
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && deadline <= 0
    {
        errors.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &deadline.to_string(),
            "must be greater than 0",
        ));
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") if spec.completions.is_none() => {
            let mut missing = FieldError::required(format!("{path}.completions"));
            missing.message = "Required value: when completion mode is Indexed".into();
            errors.push(missing);
        }
        Some("Indexed") => {}
        Some(other) => errors.push(FieldError::unsupported(
            format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    errors.extend(validate_template(
        Some(&spec.template),
        path,
        RestartRule::OnFailureOrNever,
    ));
    errors
}

/// Selects the Job's pods by its uid and labels the template to match, as kube-apiserver does
/// for every Job that does not ask for `manualSelector`. Labels the user set are kept (a
/// conflicting one then fails the selector check).
fn generate_selector(job: &mut Job) {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let Some(spec) = job.spec.as_mut() else {
        return;
    };
    if spec.manual_selector == Some(true) {
        return;
    }
    let labels = spec
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CONTROLLER_UID_LABEL, &uid),
        (LEGACY_CONTROLLER_UID_LABEL, &uid),
        (JOB_NAME_LABEL, &name),
        (LEGACY_JOB_NAME_LABEL, &name),
    ] {
        labels
            .entry(key.to_string())
            .or_insert_with(|| value.clone());
    }
    spec.selector
        .get_or_insert_with(LabelSelector::default)
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .entry(CONTROLLER_UID_LABEL.to_string())
        .or_insert(uid);
}

/// The selector kube-apiserver generates for a Job: its uid, nothing else.
fn generated_selector(uid: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            CONTROLLER_UID_LABEL.to_string(),
            uid.to_string(),
        )])),
        match_expressions: None,
    }
}

/// kubectl's STATUS: the first of Complete, Failed, Terminating, Suspended, FailureTarget that
/// holds, else Running.
fn job_status(job: &Job) -> &'static str {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .is_some_and(|c| c.status == "True")
    };
    if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if job.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if holds("Suspended") {
        "Suspended"
    } else if holds("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
}

/// kubectl's COMPLETIONS: `succeeded/completions`, or `succeeded/1 of N` for a work queue.
fn completions(spec: &JobSpec, status: &JobStatus) -> String {
    let succeeded = status.succeeded.unwrap_or(0);
    match (spec.completions, spec.parallelism.unwrap_or(0)) {
        (Some(completions), _) => format!("{succeeded}/{completions}"),
        (None, parallelism) if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
        (None, _) => format!("{succeeded}/1"),
    }
}

fn duration(status: &JobStatus, now: jiff::Timestamp) -> String {
    let Some(start) = &status.start_time else {
        return String::new();
    };
    let end = status.completion_time.as_ref().map_or(now, |t| t.0);
    human_duration(end.as_second() - start.0.as_second())
}

impl Strategy for JobStrategy {
    type Object = Job;

    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn default_fields(&self, job: &mut Job) {
        if let Some(spec) = job.spec.as_mut() {
            default_job_spec(spec);
        }
    }

    fn prepare_for_create(&self, job: &mut Job) {
        job.status = None;
        // The generic store assigns metadata.uid before admission, so the selector can use it.
        generate_selector(job);
    }

    fn prepare_for_update(&self, new: &mut Job, old: &Job) {
        new.status = old.status.clone();
    }

    fn validate(&self, job: &Job) -> FieldErrors {
        let mut errors = validate_meta(&job.metadata, NameRule::Subdomain);
        let Some(spec) = &job.spec else {
            errors.push(FieldError::required("spec"));
            return errors;
        };
        errors.extend(validate_selector(
            spec.selector.as_ref(),
            Some(&spec.template),
            "spec",
        ));
        errors.extend(validate_job_spec(spec, "spec"));
        if spec.manual_selector != Some(true)
            && let Some(uid) = job.metadata.uid.as_deref()
            && spec.selector != Some(generated_selector(uid))
        {
            errors.push(FieldError::invalid(
                "spec.selector",
                &format_selector(spec.selector.as_ref()),
                "`selector` not auto-generated",
            ));
        }
        errors
    }

    fn validate_update(&self, new: &Job, old: &Job) -> FieldErrors {
        let mut errors = self.validate(new);
        errors.extend(validate_selector_unchanged(new, old, |job| {
            job.spec.as_ref().and_then(|s| s.selector.as_ref())
        }));
        let (Some(n), Some(o)) = (&new.spec, &old.spec) else {
            return errors;
        };
        // Kubernetes lets a suspended Job's template change a little; we keep it frozen.
        errors.extend(immutable(&n.template, &o.template, "spec.template"));
        errors.extend(immutable(
            &n.completion_mode,
            &o.completion_mode,
            "spec.completionMode",
        ));
        errors.extend(immutable(
            &n.completions,
            &o.completions,
            "spec.completions",
        ));
        errors
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            Column::new("Status", "string", "Status of the job."),
            Column::new(
                "Completions",
                "string",
                "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            ),
            Column::new("Duration", "string", "Time required to complete the job."),
        ];
        columns.extend(template_columns(JOB_SELECTOR_DOC));
        columns
    }

    fn cells(&self, job: &Job, now: jiff::Timestamp) -> Vec<Value> {
        let spec = job.spec.clone().unwrap_or_default();
        let status = job.status.clone().unwrap_or_default();
        let mut cells = vec![
            Value::String(job_status(job).into()),
            Value::String(completions(&spec, &status)),
            Value::String(duration(&status, now)),
        ];
        cells.extend(template_cells(Some(&spec.template), spec.selector.as_ref()));
        cells
    }
}

/// The description of JobSpec.selector, which CronJob's SELECTOR column shares.
pub const JOB_SELECTOR_DOC: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Kind, column_names, create_errors};
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "pi", "image": "perl:5.34"}]
                    }
                }
            }
        })
    }

    #[test]
    fn defaults_and_generated_selector() {
        let job = JobStrategy.admit_create(manifest()).expect("admit");
        let spec = &job["spec"];
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {CONTROLLER_UID_LABEL: "u-1"}})
        );
        assert_eq!(
            spec["template"]["metadata"]["labels"],
            json!({
                CONTROLLER_UID_LABEL: "u-1", JOB_NAME_LABEL: "pi",
                "controller-uid": "u-1", "job-name": "pi"
            })
        );
    }

    #[test]
    fn restart_policy_always_is_refused() {
        let mut bad = manifest();
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        let errors = create_errors(&JobStrategy, bad);
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert_eq!(errors.0[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            errors.0[0].message,
            "Required value: valid values: \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn own_selector_needs_manual_selector() {
        let mut own = manifest();
        own["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
        own["spec"]["template"]["metadata"] = json!({"labels": {"app": "pi"}});
        let errors = create_errors(&JobStrategy, own.clone());
        assert_eq!(errors.0[0].field, "spec.selector");
        own["spec"]["manualSelector"] = json!(true);
        let job = JobStrategy.admit_create(own).expect("manual selector");
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"app": "pi"}})
        );
    }

    #[test]
    fn template_is_immutable() {
        let old = JobStrategy.admit_create(manifest()).expect("admit");
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:5.36");
        assert!(JobStrategy.admit_update(new, &old).is_err());
    }

    #[test]
    fn table_cells() {
        let mut job = JobStrategy.admit_create(manifest()).expect("admit");
        job["status"] = json!({
            "succeeded": 1,
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T00:00:12Z",
            "conditions": [{"type": "Complete", "status": "True"}]
        });
        let names = column_names(&JobStrategy);
        assert_eq!(
            names,
            [
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let cells = JobStrategy.table_cells(&job, jiff::Timestamp::now());
        assert_eq!(cells[1..4], [json!("Complete"), json!("1/1"), json!("12s")]);
        assert_eq!(cells[7], json!(format!("{CONTROLLER_UID_LABEL}=u-1")));
    }
}
