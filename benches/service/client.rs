//! The gRPC client of the benchmark and the servers it registers.

use tonic::{
    Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use dbtrail_servers::proto::{
    self, ConnectionMethod, servers_service_client::ServersServiceClient,
};

/// Adds `authorization: Bearer KEY` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A ServersService client with a key.
pub type Client = ServersServiceClient<InterceptedService<Channel, Bearer>>;

/// A client on `channel` authenticating with `key`.
pub fn client(channel: Channel, key: &str) -> Client {
    let value = format!("Bearer {key}").parse().expect("an ASCII key");
    ServersServiceClient::with_interceptor(channel, Bearer(value))
}

/// An SSH-tunnel server: onboarding parks it at awaiting_firewall, so the engine stays idle
/// until ConfirmFirewall (after which the jumphost, a closed loopback port, refuses at once).
pub fn parked_server(name: &str) -> proto::Server {
    proto::Server {
        name: name.to_owned(),
        host: "127.0.0.1".to_owned(),
        port: 3306,
        mysql_user: "bintrail".to_owned(),
        mysql_password: "bench-password".to_owned(),
        connection_method: ConnectionMethod::SshTunnel as i32,
        ssh_tunnel: Some(proto::SshTunnel {
            host: "127.0.0.1".to_owned(),
            port: 1,
            user: "bench".to_owned(),
            private_key: PRIVATE_KEY.to_owned(),
            ..Default::default()
        }),
        labels: [("team".to_owned(), "bench".to_owned())].into(),
        ..Default::default()
    }
}

/// Registers a server.
pub async fn register(client: &mut Client, server: proto::Server) -> proto::Server {
    let name = server.name.clone();
    client
        .register_server(proto::RegisterServerRequest {
            server: Some(server),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("RegisterServer {name}: {status:?}"))
        .into_inner()
}

/// Waits until the server's onboarding reaches awaiting_firewall.
pub async fn wait_parked(client: &mut Client, server_id: &str) -> proto::OnboardingStatus {
    let mut stream = client
        .watch_onboarding(proto::WatchOnboardingRequest {
            server_id: server_id.to_owned(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("WatchOnboarding")
        .into_inner();
    while let Some(status) = stream.message().await.expect("a watch message") {
        if status.current_step == Some(proto::OnboardingStep::AwaitingFirewall as i32) {
            return status;
        }
    }
    panic!("the watch of {server_id} ended before awaiting_firewall");
}

/// A throwaway Ed25519 key made for the benchmark; it opens nothing anywhere.
const PRIVATE_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xwAAAJgLHBg4CxwY
OAAAAAtzc2gtZWQyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xw
AAAEC0Tf6C0H5DBwWXznTL23nhXnzVFBbxIlHa5nSr20PlwB7gIxm2aXRpv8MNj+M+lUzE
RTYSVCeiRil81TaS4vTHAAAAFGRidHJhaWwtdGVzdC1maXh0dXJlAQ==
-----END OPENSSH PRIVATE KEY-----
";
