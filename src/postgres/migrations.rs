//! The versioned migrations of the bookkeeping schema `sqs2pg`, in order, and the advisory
//! lock that serialises processes applying them (`schema::setup` applies them).

/// Advisory lock key for migrations: the bytes of "sqs2pg:m" read as a big-endian i64, a value
/// unlikely to collide with another application's lock.
pub(super) const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"sqs2pg:m");

/// The migrations, in order. Each runs once; its number is its version. Never edit a released
/// migration: add a new one.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ledger, rejects and app_version_text",
        r#"
CREATE TABLE sqs2pg.processed_messages (
    message_id   text        PRIMARY KEY,
    outcome      text        NOT NULL CHECK (outcome IN ('loaded', 'rejected')),
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_messages_processed_at ON sqs2pg.processed_messages (processed_at);
COMMENT ON TABLE sqs2pg.processed_messages IS
    'Ledger of SQS message ids whose fate was committed; makes redelivery idempotent.';

CREATE TABLE sqs2pg.rejected_messages (
    message_id    text        PRIMARY KEY,
    reason        text        NOT NULL,
    detail        text,
    received_at   timestamptz NOT NULL,
    receive_count integer     NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_messages_reason ON sqs2pg.rejected_messages (reason);
COMMENT ON TABLE sqs2pg.rejected_messages IS
    'Quarantined messages: reason code and value-free detail; no raw body or field value.';

CREATE FUNCTION sqs2pg.app_version_text(v integer) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (v / 1000000)::text || '.' || (v / 1000 % 1000)::text || '.' || (v % 1000)::text $$;
COMMENT ON FUNCTION sqs2pg.app_version_text(integer) IS
    'Turns user_logins.app_version (major*1000000 + minor*1000 + patch) back into M.m.p.';
"#,
    ),
    (
        2,
        "sealed bodies of rejected messages",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN body_sealed bytea,
    ADD COLUMN seal_key_id text;
COMMENT ON COLUMN sqs2pg.rejected_messages.body_sealed IS
    'The raw body, AES-256-SIV encrypted under a key derived from the masking key, bound to message_id.';
COMMENT ON TABLE sqs2pg.rejected_messages IS
    'Quarantined messages: reason code, value-free detail, and the body sealed for key holders only.';
"#,
    ),
    (
        3,
        "replay bookkeeping for rejected messages",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replayed_to text;
"#,
    ),
    (
        4,
        "idempotent replays",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN sent_timestamp bigint,
    ADD COLUMN replay_count integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN sqs2pg.rejected_messages.replay_count IS
    'Replay ids issued so far; replay N is ledgered as message_id || ''#replay'' || N.';
"#,
    ),
    (
        5,
        "masking keys in use",
        r#"
CREATE TABLE sqs2pg.mask_keys (
    key_id         text        PRIMARY KEY,
    ip_mode        text        NOT NULL,
    device_id_mode text        NOT NULL,
    first_used     timestamptz NOT NULL DEFAULT now(),
    last_used      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sqs2pg.mask_keys IS
    'Key ids (never keys) and masking modes that runs have written tokens with; a run under another key or mode than the last one warns, since tokens then stop matching.';
"#,
    ),
    (
        6,
        "masking keys per table",
        r#"
-- Rows from before this migration are taken to be the default table's.
ALTER TABLE sqs2pg.mask_keys ADD COLUMN table_name text NOT NULL DEFAULT 'public.user_logins';
ALTER TABLE sqs2pg.mask_keys ALTER COLUMN table_name DROP DEFAULT;
ALTER TABLE sqs2pg.mask_keys ADD COLUMN retired_to text;
ALTER TABLE sqs2pg.mask_keys DROP CONSTRAINT mask_keys_pkey;
ALTER TABLE sqs2pg.mask_keys ADD PRIMARY KEY (table_name, key_id, ip_mode, device_id_mode);
COMMENT ON TABLE sqs2pg.mask_keys IS
    'Per table, every key id (never a key) and pair of masking modes that runs have written tokens with. A run under another key or modes than the last one warns; rekey reads which keys wrote ipcrypt addresses from here.';
COMMENT ON COLUMN sqs2pg.mask_keys.retired_to IS
    'Set by rekey: this key''s tokens in the table were re-keyed to that key, so runs refuse to start under this one.';
"#,
    ),
    (
        7,
        "a cheaper ledger index",
        r#"
-- Message ids are compared byte by byte (no locale rules: they are opaque ASCII): the ledger
-- insert is most of the database's work per message (BENCHMARKS.md, loader alone). This
-- rebuilds the primary key under an exclusive lock: on a large ledger, run setup in a quiet
-- moment; it gives up rather than queue behind long transactions.
SET LOCAL lock_timeout = '60s';
ALTER TABLE sqs2pg.processed_messages ALTER COLUMN message_id TYPE text COLLATE "C";
"#,
    ),
    (
        8,
        "a ledger keyed by send time",
        r#"
-- The ledger's key leads with the message's SentTimestamp (milliseconds; SQS fixes it when the
-- message is first sent, so every delivery of a message carries the same one). Ids then arrive
-- in roughly key order: inserts land on the right edge of the index instead of all over it, so
-- its working set stays small however long the history, and pruning walks the key. Replays
-- (ids `...#replayN`) are kept at sent_ms 0, outside the time order, and never pruned.
-- An older sqs2pg still running must not add to the old ledger while its replay ids move:
SET LOCAL lock_timeout = '60s';
LOCK TABLE sqs2pg.processed_messages IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE sqs2pg.ledger (
    sent_ms      bigint      NOT NULL,
    message_id   text        COLLATE "C" NOT NULL,
    outcome      text        NOT NULL DEFAULT 'loaded' CHECK (outcome IN ('loaded', 'rejected')),
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sent_ms, message_id)
);
COMMENT ON TABLE sqs2pg.ledger IS
    'Ledger of SQS messages whose fate was committed, keyed by (SentTimestamp in ms, message id); makes redelivery idempotent. Replays are at sent_ms 0.';
INSERT INTO sqs2pg.ledger (sent_ms, message_id, outcome, processed_at)
SELECT 0, message_id, outcome, processed_at FROM sqs2pg.processed_messages
 WHERE message_id LIKE '%#replay%';
DELETE FROM sqs2pg.processed_messages WHERE message_id LIKE '%#replay%';
-- The old ledger keeps the ids of messages processed before this migration (with no send time
-- to key them by): loads still check it until pruning has emptied it. Nothing may add to it: a
-- run of an older sqs2pg still going would otherwise miss the new ledger's ids.
CREATE FUNCTION sqs2pg.refuse_legacy_ledger() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION 'sqs2pg.processed_messages was replaced by sqs2pg.ledger (schema version 8): stop this older sqs2pg and run the current one';
END
$f$;
CREATE TRIGGER processed_messages_retired BEFORE INSERT OR UPDATE ON sqs2pg.processed_messages
    FOR EACH STATEMENT EXECUTE FUNCTION sqs2pg.refuse_legacy_ledger();
COMMENT ON TABLE sqs2pg.processed_messages IS
    'Retired ledger (schema version 8): ids processed before sqs2pg.ledger existed, checked by loads until pruned away.';
"#,
    ),
    (
        9,
        "masks recorded per column",
        r#"
-- Which key and mode wrote each masked column, under which scope: the login table's two
-- columns as before, and any mapping's token columns. The login table's records are carried
-- over from mask_keys (masked_ip under scope ip, masked_device_id under scope device_id).
CREATE TABLE sqs2pg.mask_columns (
    table_name  text        NOT NULL,
    column_name text        NOT NULL,
    scope       text        NOT NULL,
    mode        text        NOT NULL,
    key_id      text        NOT NULL,
    first_used  timestamptz NOT NULL DEFAULT now(),
    last_used   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, column_name, key_id, mode, scope)
);
INSERT INTO sqs2pg.mask_columns
       (table_name, column_name, scope, mode, key_id, first_used, last_used)
SELECT table_name, 'masked_ip', 'ip', ip_mode, key_id, min(first_used), max(last_used)
  FROM sqs2pg.mask_keys GROUP BY table_name, ip_mode, key_id
UNION ALL
SELECT table_name, 'masked_device_id', 'device_id', device_id_mode, key_id, min(first_used),
       max(last_used)
  FROM sqs2pg.mask_keys GROUP BY table_name, device_id_mode, key_id;
COMMENT ON TABLE sqs2pg.mask_columns IS
    'Per table and masked column: every key id (never a key), mode and scope that runs have written tokens with. Columns with one scope give equal tokens for equal values under one key.';
"#,
    ),
    (
        10,
        "attempts at suspects",
        r#"
-- Before a message received more often than the limit (a suspect) is processed, its attempt
-- is recorded here, outside the process, and counted finished once its processing returned:
-- a body that kills the process (an abort, an OOM kill) leaves attempts that never finished,
-- and is quarantined unparsed once it has left enough of them. A message whose load alone
-- stalled the database (while it took other work) is counted here too, once per delivery.
-- Keyed like the ledger's message ids (a replay's ledger id).
CREATE TABLE sqs2pg.attempts (
    message_id text        PRIMARY KEY,
    sent_ms    bigint      NOT NULL,
    started    integer     NOT NULL,
    finished   integer     NOT NULL DEFAULT 0,
    stalled    integer     NOT NULL DEFAULT 0,
    first_at   timestamptz NOT NULL DEFAULT now(),
    last_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_last_at ON sqs2pg.attempts (last_at);
COMMENT ON TABLE sqs2pg.attempts IS
    'Attempts at processing suspects (messages received more often than --max-receive-count), counted before each and finished after; one whose attempts ended --max-crashes times without finishing (the process died) is quarantined as poison:crashed, one whose load alone stalled the database on --max-crashes deliveries as poison:stalled.';
"#,
    ),
    (
        11,
        "sealed envelopes of rejected messages",
        r#"
ALTER TABLE sqs2pg.rejected_messages ADD COLUMN envelope_sealed bytea;
COMMENT ON COLUMN sqs2pg.rejected_messages.envelope_sealed IS
    'What SQS carried besides the body (message attributes; on FIFO the group and deduplication ids), as JSON, sealed like the body (bound to message_id and the word envelope); NULL when there was nothing. A replay sends them back.';
"#,
    ),
    (
        12,
        "versions and tombstones of keyed tables, rows applied by upsert",
        r#"
-- Under write mode latest: per table and key, the version that won (with its SentTimestamp
-- and message id, the tie-breaks) and, for a delete, when it won (a tombstone: an older
-- update arriving later does not bring the row back). Tombstones are pruned past the ledger's
-- horizon; live entries stay as long as their row.
CREATE TABLE sqs2pg.row_versions (
    target     text        NOT NULL,
    key        text        NOT NULL COLLATE "C",
    version    numeric     NOT NULL,
    sent_ms    bigint      NOT NULL,
    message_id text        NOT NULL COLLATE "C",
    deleted_at timestamptz,
    PRIMARY KEY (target, key)
) WITH (fillfactor = 70);  -- room on each page, so a new version is a HOT update
CREATE INDEX row_versions_tombstones ON sqs2pg.row_versions (deleted_at)
    WHERE deleted_at IS NOT NULL;
COMMENT ON TABLE sqs2pg.row_versions IS
    'Write mode latest: the winning version of each key (version as a number, then SentTimestamp, then message id); deleted_at marks a tombstone, pruned past the ledger retention.';

-- Under write mode upsert: a digest of each row applied (its columns), with its key, so a
-- resend of one (a producer retry, a dead-letter redrive under a new message id) changes
-- nothing until a delete of the key forgets them. Pruned past the ledger's horizon.
CREATE TABLE sqs2pg.applied_rows (
    target     text        NOT NULL,
    digest     bytea       NOT NULL,
    key        text        NOT NULL COLLATE "C",
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, digest)
);
CREATE INDEX applied_rows_applied_at ON sqs2pg.applied_rows (applied_at);
-- A delete forgets its key's digests: the same state sent again after it is new.
CREATE INDEX applied_rows_key ON sqs2pg.applied_rows (target, key);
COMMENT ON TABLE sqs2pg.applied_rows IS
    'Write mode upsert: digests of the rows applied, so a resend of one is a duplicate_key; pruned past the ledger retention.';
"#,
    ),
    (
        13,
        "applied rows keyed by table, key and digest, pruned by a BRIN index; room for HOT updates of row versions",
        r#"
-- One B-tree instead of three on a table written once per upserted row: a resend has its
-- key's digest (the digest covers the key's columns), and a delete forgets the key's digests
-- by the front of the same index. The time of application grows with the table's physical
-- order, so the prune's range is a BRIN index (a few pages, nothing to maintain per row).
-- From this version on a digest is a 64-bit hash of the row's values; the MD5s written before
-- would never match one, so they go (a resend of a state applied before is applied again).
DELETE FROM sqs2pg.applied_rows WHERE length(digest) <> 8;
ALTER TABLE sqs2pg.applied_rows DROP CONSTRAINT applied_rows_pkey,
    ADD PRIMARY KEY (target, key, digest);
DROP INDEX sqs2pg.applied_rows_key;
DROP INDEX sqs2pg.applied_rows_applied_at;
CREATE INDEX applied_rows_applied_at ON sqs2pg.applied_rows USING brin (applied_at);
-- A batch of neighbouring keys replaces every entry of a page: with half of each page free,
-- each new version stays on its page (a HOT update, no new index entry). Measured: the
-- resolving statement of a 5,000-row latest batch took half the time at 50 as at 70.
-- (New pages only; pages already written keep their fill until rewritten.)
ALTER TABLE sqs2pg.row_versions SET (fillfactor = 50);
"#,
    ),
    (
        14,
        "upsert compares with the table's own row: applied_rows goes",
        r#"
-- Under write mode upsert a row is a resend when it equals the key's row in the table, which
-- the write itself compares (ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM): the
-- digests of every row applied are no longer kept.
DROP TABLE sqs2pg.applied_rows;
"#,
    ),
    (
        15,
        "changes setup made to mapped tables",
        r#"
-- Each change `setup` made to a mapped table that existed (a column added, a varchar
-- widened): which table, a hash of the mapping's table shape that asked for it, the statement
-- and when. Kept: a table's history is short.
CREATE TABLE sqs2pg.schema_changes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target       text        NOT NULL,
    mapping_hash text        NOT NULL,
    statement    text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sqs2pg.schema_changes IS
    'Changes setup made to mapped tables in place (additive only: columns added, varchars widened), with the hash of the mapping''s table shape that asked for them.';
"#,
    ),
];

/// The schema version this build expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
