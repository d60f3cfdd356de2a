//! Generates the gRPC client for the node's `Kv` service from the node crate's
//! `proto/dsm.proto`, with the vendored `protoc` so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../node/proto/dsm.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["../node/proto/dsm.proto"], &["../node/proto"])?;
    Ok(())
}
