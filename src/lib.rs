//! sqs2pg moves JSON messages from an Amazon SQS queue into PostgreSQL, masking personal data on
//! the way: the exercise's login messages by default, any other shape through a declarative
//! mapping.
//!
//! # Data flow
//!
//! ```text
//! SQS message (id, receipt handle, body, SentTimestamp, ApproximateReceiveCount, attributes)
//!   -> sqs::Received          one message we hold a lease on; SentTimestamp in milliseconds
//!   -> kind::MessageKind      mapping::Mapper (login::LoginKind: the built-in mapping) or a Router
//!   -> kind::CopyRows         the message's masked rows, encoded for binary COPY (or a Rejection)
//!   -> pipeline::batch::Batch rows + rejections + the ack handles that ride with them
//!   -> postgres::TableLoader  one transaction: rows, rejections, ledger of message ids; COMMIT
//!   -> sqs DeleteMessageBatch only now, 10 per call
//! ```
//!
//! # Delivery guarantee
//!
//! A message is deleted from SQS only after its row or its rejection is committed. The ledger
//! (`sqs2pg.ledger`, keyed by send time and SQS message id) is written in the same transaction, so
//! a redelivery, a crash between COMMIT and delete, or a second replica never adds a second row.
//! Whatever is not committed stays in SQS and comes back after its visibility timeout.
//!
//! # Modules
//!
//! - [`cli`], [`config`]: flags and environment, turned into checked settings.
//! - [`login`]: the built-in kind: the mapping engine on the built-in login mapping, and the
//!   masks of its two personal columns for the key commands.
//! - [`keys`]: the masking key, key rings and the sealing of quarantined bodies.
//! - [`mask`]: tokens for personal values, one column under a scope at a time; every kind's.
//! - [`app_version`]: version strings as one order-preserving integer; every kind's.
//! - [`kind`]: the seam between the pipeline and what a message means.
//! - [`mapping`]: declarative mappings of any JSON message to rows, pure; a message kind.
//! - [`sqs`]: the source (receive, delete, send).
//! - [`postgres`]: the sink (schema, readiness, loader).
//! - [`pipeline`]: receivers, batcher/loader and deleter tasks; the run summary.
//! - [`error`]: the one fate policy (ack / quarantine / retry / stop) and backoff.
//! - [`app`]: the commands, wired from settings; used by `main` and by the tests.
//! - [`telemetry`]: logging setup and the rule of what may be logged.

pub mod app;
pub mod app_version;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod kind;
pub mod login;
pub mod mapping;
pub mod mask;
pub mod pipeline;
pub mod postgres;
pub mod report;
pub mod retry;
pub mod sqs;
pub mod telemetry;
pub mod tls;
pub mod toml_error;
