//! The integration tests, one binary (linked once): a module per area, against real
//! PostgreSQL, MariaDB, OpenSSH and clients. `common` is the harness; `rest_common` the REST
//! tests' helpers.

mod common;
mod rest_common;

mod archive;
mod audit;
mod auth;
mod binlog_files;
mod change_index;
mod chaos;
mod check;
mod cli;
mod connections;
mod demo;
mod edge;
mod examples;
mod fencing;
mod housekeeping;
mod listing;
mod log_lines;
mod mysql_bytes;
mod mysql_checks;
mod mysql_failures;
mod mysql_onboarding;
mod onboarding_watch;
mod openapi_rules;
mod operations;
mod outage;
mod packed_steps;
mod pause;
mod performance;
mod pipeline;
mod readme;
mod replicas;
mod rest_api;
mod rest_fuzz;
mod rest_watch;
mod schema_changes;
mod secrets;
mod servers_api;
mod servers_watch;
mod ssh_tunnels;
mod streaming;
mod tls;
mod undo;
mod validation;
mod webhook_delivery;
mod webhooks;
