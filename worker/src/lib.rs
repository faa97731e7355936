//! The Weir stream worker: reads sources per partition, decodes records against the declared
//! schema, assigns event time and watermarks, runs keyed operators on RocksDB state, and writes
//! sinks, committing state with input positions every epoch.

pub mod admin;
pub mod batch;
pub mod codec;
pub mod expr;
pub mod metrics;
pub mod operators;
pub mod plan;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod task;
pub mod value;
