//! The gateway's domain types, at the bottom of its layers: the job record and its status,
//! error and callback records, the job spec with its limits and validation, the recurring
//! schedule with its cadence, a job type's flow settings, the workflow with the rule that moves it on, and the API key. Pure data and pure rules: this module imports
//! nothing else from the crate, and everything above it (stores, services, HTTP) speaks in
//! its types.

pub mod callback;
pub mod dead_letter;
pub mod flow;
pub mod job;
pub mod key;
pub mod raw_json;
pub mod schedule;
pub mod spec;
pub mod workflow;

pub use callback::{Callback, CallbackState, Delivery};
pub use dead_letter::{DeadLetter, DeadLetterPage};
pub use flow::{FlowChange, FlowUpdate, QueueSettings};
pub use job::{AttemptError, Job, MAX_ERRORS};
pub use key::{ApiKey, DEFAULT_TENANT, NewKey, Right};
pub use raw_json::RawJson;
pub use schedule::{Cadence, Fired, Schedule};
pub use spec::{JobSpec, SpecError, SpecLimits, ValidJob};
pub use workflow::{
    Plan, Step, StepSpec, StepView, ValidWorkflow, Workflow, WorkflowError, WorkflowSpec,
    WorkflowStatus, WorkflowView,
};
