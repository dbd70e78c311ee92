//! Compiles keel's `.proto` files with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kv.proto", "proto/rpc.proto", "proto/internal.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let services = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(services)
        .build_server(services)
        .compile_fds(fds)?;
    Ok(())
}
