//! Real servers for the integration tests: one PostgreSQL cluster and one moto SQS server per
//! test process, on free loopback ports, started on first use, and LocalStack 0.14.3 (the
//! exercise's own, query-only SQS) when a test asks for it; a fresh database and a fresh queue
//! for each test. A watchdog process stops the servers when the test process exits.
//!
//! Overrides: `SQS2PG_TEST_PG_BINDIR` (PostgreSQL's bin directory, default the newest under
//! /usr/lib/postgresql), `SQS2PG_TEST_MOTO` (the moto_server command) and
//! `SQS2PG_TEST_LOCALSTACK` (LocalStack 0.14.3's `localstack` command, default the one
//! `scripts/install-deps.sh` installs).
//!
//! One concern per file: `binary`, `data`, `localstack`, `logs`, `moto`, `postgres`, `queue`,
//! `run`, `servers`, `wait`.

mod binary;
mod data;
mod localstack;
mod logs;
mod moto;
mod postgres;
mod queue;
mod run;
mod servers;
mod wait;

pub use binary::*;
pub use data::*;
pub use localstack::*;
pub use logs::*;
pub use moto::*;
pub use postgres::*;
pub use queue::*;
pub use run::*;
pub use servers::*;
pub use wait::*;

/// Runs the core test `$case(sqs: Sqs)` against every SQS server and protocol, as tests
/// `$case::moto_json`, `$case::moto_query`, `$case::localstack_0_14` (query-only, reached
/// with `auto`) and `$case::localstack_4` (JSON, with `auto`).
macro_rules! on_every_sqs {
    ($case:ident) => {
        mod $case {
            use crate::harness::Sqs;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto_json() {
                super::$case(Sqs::MotoJson).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto_query() {
                super::$case(Sqs::MotoQuery).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn localstack_0_14() {
                super::$case(Sqs::LocalStack014).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn localstack_4() {
                super::$case(Sqs::LocalStack4).await
            }
        }
    };
}
