//! Integration tests: real PostgreSQL and a real SQS server (moto) over HTTP, started by
//! `harness`. Fault injection happens only at the pipeline's seams (`MessageSource`,
//! `BatchLoader`), never at the network boundary.

#[macro_use]
mod harness;
mod cli;
mod deploy;
mod faults;
mod pipeline;
mod schema;
