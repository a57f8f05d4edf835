//! Compiles the protos with protox (no system protoc) and embeds the descriptor set, imports
//! included, for gRPC reflection and the REST translation layer.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(["dbtrail/servers/v1/servers.proto"])?;

    // Encoded by protox itself: re-encoding prost_types would drop the options' extensions
    // (google.api.http, google.api.field_behavior) that the REST layer reads.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("servers_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost with small first buffers (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::LeanCodec")
        // CheckServer's target: a whole Server or an id; boxed, so the small case stays small.
        .boxed(".dbtrail.servers.v1.CheckServerRequest.target.server")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
