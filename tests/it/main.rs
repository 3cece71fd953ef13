//! Integration tests: real PostgreSQL and real SQS servers (moto, LocalStack) over HTTP,
//! started by `harness`. Fault injection happens only at the pipeline's seams
//! (`MessageSource`, `BatchLoader`), never at the network boundary; a slow server is a real one
//! behind a rate-limiting proxy (`proxy`). The volume tests (`scale`) are the slow tier:
//! ignored by default, run by `scripts/test.sh`. The other files are named by feature.

#[macro_use]
mod harness;
mod bad_messages;
mod container;
mod deploy;
mod evolve;
mod exactly_once;
mod faults;
mod keyed;
mod keys;
mod lifecycle;
mod login;
mod mapped;
mod mapping;
mod operations;
mod outages;
mod proxy;
mod quarantine;
mod rekey;
mod resilience;
mod scale;
mod schema;
mod settings;
mod sqs_access;
mod streams;
