//! Integration tests: real PostgreSQL and real SQS servers (moto, LocalStack) over HTTP,
//! started by `harness`. Fault injection happens only at the pipeline's seams
//! (`MessageSource`, `BatchLoader`), never at the network boundary; a slow server is a real one
//! behind a rate-limiting proxy (`proxy`). The volume tests (`scale`, and the kill test in
//! `cli`) are the slow tier: ignored by default, run by `scripts/test.sh`.

#[macro_use]
mod harness;
mod cli;
mod deploy;
mod faults;
mod mapped;
mod mapping;
mod pipeline;
mod proxy;
mod scale;
mod schema;
