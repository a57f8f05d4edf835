//! The customer's MySQL, as one room: everything the agent asks of it and how it reads it.
//! `onboarding/` and `stream/` both use it; it imports neither.
//!
//! - `connection`: reaching the server (resolve, target policy, SSH tunnel, login, failures),
//!   through a narrow `ConnectContext` that each caller builds under its own lease;
//! - `replication`: asking it as a replica would (binlog coordinates, identity, refusals of a
//!   dump, ending a dump thread);
//! - `events`, `decode`, `gtid`, `jsondiff`: what each binlog event means (transactions, GTIDs,
//!   compressed transactions, events without rows), and row images decoded into JSON, shared by
//!   the live stream and the offline reader of binlog files (`file`, `binlog events`), so both
//!   read a binlog the same way;
//! - `schema`: what snapshotting reads from information_schema, and `snapshot`: the schema
//!   snapshot as stored; `tables`: the snapshot history as each table's columns by binlog place
//!   (the stream decodes with it, RevertChanges writes SQL with it), and the tables a DDL
//!   statement names;
//! - `undo`: SQL in MySQL's dialect that undoes captured row changes (RevertChanges).

pub mod connection;
pub mod decode;
pub mod events;
pub mod file;
pub mod gtid;
pub mod jsondiff;
pub mod replication;
pub mod schema;
pub mod snapshot;
pub mod tables;
pub mod undo;
