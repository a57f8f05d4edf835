//! dbtrail-servers: the control plane that registers the MySQL/MariaDB servers dbtrail monitors
//! and drives each one through onboarding.

pub mod agent;
pub mod app;
pub mod auth;
pub mod call_layer;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod housekeeping;
pub mod http;
pub mod lease;
pub mod log_format;
pub mod notify;
pub mod onboarding;
pub mod secrets;
pub mod source;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod webhooks;

/// The generated gRPC types and the descriptor set of `proto/`, imports included.
pub mod proto {
    /// The service's own package, re-exported below as `proto::*`; nested as its package is,
    /// so that its references to `google.api` resolve.
    pub mod dbtrail {
        pub mod servers {
            pub mod v1 {
                tonic::include_proto!("dbtrail.servers.v1");
            }
        }
    }
    /// The messages of `google.api` (HttpBody: RevertChanges streams it).
    pub mod google {
        pub mod api {
            tonic::include_proto!("google.api");
        }
    }
    pub use dbtrail::servers::v1::*;
    pub use google::api::HttpBody;

    /// The encoded FileDescriptorSet, for reflection and the REST layer.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("servers_descriptor");
}
