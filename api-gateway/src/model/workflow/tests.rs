//! The workflow rules, case by case: validation's refusals and [`plan`]'s decisions.

use serde_json::json;
use warren_shared::JobStatus::{self, Cancelled, Failed, Queued, Running, Succeeded, Waiting};

use super::*;

fn limits() -> SpecLimits {
    SpecLimits {
        default_timeout_ms: 60_000,
        max_timeout_ms: 600_000,
        max_delay: std::time::Duration::from_secs(86_400),
    }
}

fn spec(body: serde_json::Value) -> WorkflowSpec {
    serde_json::from_value(body).expect("a well-formed body")
}

fn refused(body: serde_json::Value) -> WorkflowError {
    spec(body).validate(&limits()).expect_err("refused")
}

/// A workflow record of `(name, depends_on)` steps.
fn workflow(steps: &[(&str, &[&str])]) -> Workflow {
    let body = json!({"steps": steps.iter().map(|(name, deps)| json!({
        "name": name, "type": "echo", "depends_on": deps,
    })).collect::<Vec<_>>()});
    let valid = spec(body).validate(&limits()).expect("valid");
    valid.into_records("default", None).0
}

#[test]
fn steps_without_dependencies_are_queued_and_the_others_wait() {
    let valid = spec(json!({"steps": [
        {"name": "a", "type": "echo"},
        {"name": "b", "type": "echo", "depends_on": ["a"]},
    ]}))
    .validate(&limits())
    .expect("valid");
    let (workflow, jobs) = valid.into_records("acme", None);
    assert_eq!(jobs[0].status, Queued);
    assert!(jobs[0].unconfirmed_since.is_some());
    assert_eq!(jobs[1].status, Waiting);
    assert!(jobs[1].unconfirmed_since.is_none());
    assert!(
        jobs.iter()
            .all(|job| job.workflow_id == Some(workflow.id) && job.tenant == "acme")
    );
    assert_eq!(jobs[1].step.as_deref(), Some("b"));
    assert_eq!(workflow.job_ids(), vec![jobs[0].id, jobs[1].id]);
}

#[test]
fn duplicate_names_are_refused_naming_both() {
    let error = refused(json!({"steps": [
        {"name": "a", "type": "echo"}, {"name": "a", "type": "echo"},
    ]}));
    assert_eq!(error.field, "steps[1].name");
    assert!(error.message.contains("steps[0]"), "{error}");
}

#[test]
fn an_unknown_dependency_is_refused() {
    let error = refused(json!({"steps": [
        {"name": "a", "type": "echo", "depends_on": ["nope"]},
    ]}));
    assert_eq!(error.field, "steps[0].depends_on");
    assert!(error.message.contains("\"nope\""), "{error}");
}

#[test]
fn a_cycle_is_refused_naming_its_steps() {
    let error = refused(json!({"steps": [
        {"name": "start", "type": "echo"},
        {"name": "a", "type": "echo", "depends_on": ["start", "c"]},
        {"name": "b", "type": "echo", "depends_on": ["a"]},
        {"name": "c", "type": "echo", "depends_on": ["b"]},
        {"name": "after", "type": "echo", "depends_on": ["c"]},
    ]}));
    assert_eq!(error.field, "steps");
    for name in ["\"a\"", "\"b\"", "\"c\""] {
        assert!(error.message.contains(name), "{error}");
    }
    assert!(!error.message.contains("\"start\""), "{error}");
    assert!(!error.message.contains("\"after\""), "{error}");
}

#[test]
fn a_step_that_depends_on_itself_is_a_cycle() {
    let error = refused(json!({"steps": [{"name": "a", "type": "echo", "depends_on": ["a"]}]}));
    assert_eq!(error.field, "steps");
    assert!(error.message.contains("cycle"), "{error}");
}

#[test]
fn an_invalid_step_is_refused_with_its_path() {
    let error = refused(json!({"steps": [
        {"name": "a", "type": "echo"}, {"name": "b", "type": "echo"},
        {"name": "c", "type": "echo"}, {"name": "d", "type": "Not A Type"},
    ]}));
    assert_eq!(error.field, "steps[3].type");
    let error = refused(json!({"steps": [{"name": "a", "type": "echo", "max_attempts": 0}]}));
    assert_eq!(error.field, "steps[0].max_attempts");
    let error = refused(json!({"steps": [{"name": "Bad Name", "type": "echo"}]}));
    assert_eq!(error.field, "steps[0].name");
}

#[test]
fn a_steps_priority_reaches_its_job_and_an_unknown_one_is_refused() {
    let error = refused(json!({"steps": [{"name": "a", "type": "echo", "priority": "urgent"}]}));
    assert_eq!(error.field, "steps[0].priority");
    let high = spec(json!({"steps": [{"name": "a", "type": "echo", "priority": "high"}]}));
    let valid = high.validate(&limits()).unwrap();
    assert_eq!(valid.steps[0].job.priority, warren_shared::Priority::High);
}

#[test]
fn too_many_steps_and_no_steps_are_refused() {
    let steps: Vec<_> = (0..=MAX_STEPS)
        .map(|i| json!({"name": format!("s{i}"), "type": "echo"}))
        .collect();
    assert_eq!(refused(json!({ "steps": steps })).field, "steps");
    assert_eq!(refused(json!({"steps": []})).field, "steps");
}

#[test]
fn a_step_is_released_once_every_dependency_succeeded() {
    let wf = workflow(&[("a", &[]), ("b", &[]), ("join", &["a", "b"])]);
    let plan_of = |statuses: &[JobStatus]| plan(&wf, statuses);
    assert_eq!(
        plan_of(&[Succeeded, Running, Waiting]).release,
        Vec::<usize>::new()
    );
    let both = plan_of(&[Succeeded, Succeeded, Waiting]);
    assert_eq!(both.release, vec![2]);
    assert_eq!(both.status, WorkflowStatus::Running);
    // Once released, the same state plans nothing more: a release happens once.
    assert_eq!(
        plan_of(&[Succeeded, Succeeded, Queued]).release,
        Vec::<usize>::new()
    );
    assert_eq!(
        plan_of(&[Succeeded, Succeeded, Succeeded]).status,
        WorkflowStatus::Succeeded
    );
}

#[test]
fn a_failure_cancels_its_dependents_transitively_and_nothing_else() {
    let wf = workflow(&[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["b"]),
        ("other", &[]),
        ("after-other", &["other"]),
    ]);
    let plan = plan(&wf, &[Failed, Waiting, Waiting, Succeeded, Waiting]);
    assert_eq!(plan.cancel, vec![1, 2]);
    assert_eq!(plan.release, vec![4]);
    assert_eq!(plan.status, WorkflowStatus::Running);
}

#[test]
fn the_workflow_fails_once_nothing_runs() {
    let wf = workflow(&[("a", &[]), ("b", &["a"]), ("c", &[])]);
    assert_eq!(
        plan(&wf, &[Failed, Waiting, Running]).status,
        WorkflowStatus::Running
    );
    assert_eq!(
        plan(&wf, &[Failed, Waiting, Succeeded]).status,
        WorkflowStatus::Failed
    );
    assert_eq!(
        plan(&wf, &[Cancelled, Waiting, Succeeded]).status,
        WorkflowStatus::Cancelled
    );
}

#[test]
fn a_cancelled_workflow_releases_nothing_more() {
    let mut wf = workflow(&[("a", &[]), ("b", &["a"])]);
    wf.cancel_requested = true;
    let plan = plan(&wf, &[Succeeded, Waiting]);
    assert_eq!(plan.release, Vec::<usize>::new());
    assert_eq!(plan.cancel, vec![1]);
    assert_eq!(plan.status, WorkflowStatus::Cancelled);
}
