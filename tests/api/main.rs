//! The integration tests, one binary (linked once): a module per area, against real
//! PostgreSQL, MariaDB, OpenSSH and clients. `common` is the harness; `rest_common` the REST
//! tests' helpers.

mod common;
mod rest_common;

mod auth;
mod binlog_files;
mod chaos;
mod cli;
mod edge;
mod examples;
mod fencing;
mod listing;
mod mysql_bytes;
mod mysql_checks;
mod mysql_failures;
mod mysql_onboarding;
mod onboarding_watch;
mod operations;
mod outage;
mod performance;
mod replicas;
mod rest_api;
mod rest_fuzz;
mod rest_watch;
mod secrets;
mod servers_api;
mod ssh_tunnels;
mod streaming;
mod tls;
mod validation;
