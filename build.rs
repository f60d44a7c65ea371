//! Compiles `proto/laser/v1/*.proto` (and the Open Inference Protocol's
//! `proto/inference/grpc_service.proto`, client only) with protox (pure Rust, no system protoc), emits the
//! file descriptor set used by gRPC server reflection, and generates the proto3 JSON
//! mapping (serde, via pbjson) that the HTTP/JSON API uses for the same messages.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/laser/v1/common.proto",
        "proto/laser/v1/reward_router.proto",
        "proto/laser/v1/admin.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("laser_descriptor.bin"), &descriptor_bytes)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".laser.v1"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    // The Open Inference Protocol (reward models on Triton, KServe, MLServer): client only.
    let inference = "proto/inference/grpc_service.proto";
    println!("cargo:rerun-if-changed={inference}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([inference], ["proto"])?)?;
    Ok(())
}
