//! The job queue: durable jobs under `.loops/jobs/`, their records, statistics and
//! reports; and which of a run's changes are its own (`own`).

pub mod engine;
pub mod group_commit;
pub mod job;
pub mod own;
pub mod params;
pub mod policy;
pub mod queue;
pub mod report;
pub mod spares;
pub mod stats;
pub mod store;
