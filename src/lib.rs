//! dbtrail-servers: the control plane that registers the MySQL/MariaDB servers dbtrail monitors
//! and drives each one through onboarding.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod log_format;
pub mod onboarding;
pub mod rest;
pub mod secrets;
pub mod source;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod watch;

/// The generated gRPC types and the descriptor set of `proto/`, imports included.
pub mod proto {
    tonic::include_proto!("dbtrail.servers.v1");

    /// The encoded FileDescriptorSet, for reflection and the REST layer.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("servers_descriptor");
}
