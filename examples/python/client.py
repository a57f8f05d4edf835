"""Calling dbtrail-servers from Python: register an SSH-tunnel server, follow its onboarding with
WatchOnboarding, confirm the firewall when the service asks for it, and print every revision
until the server is active or in error.

The stubs are generated from proto/ (never committed):

    python3 -m pip install grpcio grpcio-tools
    python3 -m grpc_tools.protoc -I proto --python_out=examples/python/gen \\
        --grpc_python_out=examples/python/gen proto/dbtrail/servers/v1/servers.proto \\
        proto/google/api/annotations.proto proto/google/api/http.proto \\
        proto/google/api/field_behavior.proto proto/google/api/httpbody.proto
    PYTHONPATH=examples/python/gen DBTRAIL_KEY=dbt_... DBTRAIL_SSH_KEY_FILE=~/.ssh/bastion \\
        python3 examples/python/client.py orders-db db.internal.example bastion.example.com

DBTRAIL_GRPC is the service's address (default localhost:50051); MYSQL_USER, MYSQL_PASSWORD and
SSH_USER default to bintrail, empty and ec2-user.
"""

import argparse
import os
import sys

import grpc

from dbtrail.servers.v1 import servers_pb2, servers_pb2_grpc

SETTLED = (servers_pb2.SERVER_STATUS_ACTIVE, servers_pb2.SERVER_STATUS_ERROR)


def describe(status):
    """One line: the revision, the server's status, the current step and its message."""
    server_status = servers_pb2.ServerStatus.Name(status.server_status)
    step, message = "none", ""
    for progress in status.steps:
        if status.HasField("current_step") and progress.name == status.current_step:
            step, message = servers_pb2.OnboardingStep.Name(progress.name), progress.message
    return f"revision {status.revision}: {server_status}, step {step}: {message}"


def run(address, key, server, stop_at=None):
    """Registers `server`, confirms its firewall when asked, prints each revision until the server
    is active or in error, or its onboarding reaches step `stop_at`; returns the server's id."""
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(address) as channel:
        stub = servers_pb2_grpc.ServersServiceStub(channel)
        registered = stub.RegisterServer(
            servers_pb2.RegisterServerRequest(server=server), metadata=metadata
        )
        print(f"registered {registered.name} as {registered.server_id}", flush=True)
        watch = stub.WatchOnboarding(
            servers_pb2.WatchOnboardingRequest(server_id=registered.server_id, follow=True),
            metadata=metadata,
        )
        confirmed = False
        for status in watch:
            print(describe(status), flush=True)
            # The service names the IP to allow exactly while it waits for the firewall.
            if status.HasField("agent_outbound_ip") and not confirmed:
                print(
                    f"allowing {status.agent_outbound_ip} on the jumphost is up to you; "
                    "confirming the firewall",
                    flush=True,
                )
                stub.ConfirmFirewall(
                    servers_pb2.ConfirmFirewallRequest(server_id=registered.server_id),
                    metadata=metadata,
                )
                confirmed = True
            step = (
                servers_pb2.OnboardingStep.Name(status.current_step)
                if status.HasField("current_step")
                else None
            )
            if status.server_status in SETTLED or (stop_at and step == stop_at):
                watch.cancel()
                return registered.server_id
    raise RuntimeError("the watch ended before onboarding settled")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("mysql_host")
    parser.add_argument("jumphost")
    parser.add_argument("--stop-at", help="an OnboardingStep name, e.g. ONBOARDING_STEP_WAITING_FOR_AGENT")
    args = parser.parse_args()
    key = os.environ.get("DBTRAIL_KEY") or sys.exit("set DBTRAIL_KEY to an API key")
    key_file = os.environ.get("DBTRAIL_SSH_KEY_FILE") or sys.exit(
        "set DBTRAIL_SSH_KEY_FILE to the jumphost's private key file"
    )
    with open(key_file, encoding="utf-8") as file:
        private_key = file.read()
    server = servers_pb2.Server(
        name=args.name,
        host=args.mysql_host,
        port=3306,
        mysql_user=os.environ.get("MYSQL_USER", "bintrail"),
        mysql_password=os.environ.get("MYSQL_PASSWORD", ""),
        connection_method=servers_pb2.CONNECTION_METHOD_SSH_TUNNEL,
        ssh_tunnel=servers_pb2.SshTunnel(
            host=args.jumphost,
            user=os.environ.get("SSH_USER", "ec2-user"),
            private_key=private_key,
        ),
    )
    try:
        run(os.environ.get("DBTRAIL_GRPC", "localhost:50051"), key, server, args.stop_at)
    except grpc.RpcError as error:
        sys.exit(f"{error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
