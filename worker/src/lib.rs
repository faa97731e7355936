//! The Weir stream worker: reads sources per partition, decodes records against the declared
//! schema, assigns event time and watermarks, runs keyed operators on RocksDB state, and writes
//! sinks; results are visible every epoch, state is committed with input positions every
//! checkpoint interval and checkpointed to storage.

pub mod admin;
pub mod batch;
pub mod checkpoint;
pub mod codec;
pub mod expr;
pub mod fault;
pub mod metrics;
pub mod operators;
pub mod plan;
pub mod profile;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod table;
pub mod task;
pub mod value;
