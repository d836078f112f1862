//! The engine: everything that runs. The scheduler plans a loop's runs; a run of a loop
//! (`loop_run`, with its prompt payload in `prompt_run`), a wake of the main session
//! (`main_session`, its model in `main_agent`) and a queued job (`worker`) each start from a
//! [`run_context::RunContext`].

pub mod budget;
pub mod doorbell;
pub mod loop_run;
pub mod main_agent;
pub mod main_session;
pub mod prompt_run;
pub mod pull_hold;
pub mod recovery;
pub mod run_context;
pub mod run_lane;
pub mod scheduler;
pub mod syncer;
pub mod worker;
