//! Compiles the `.proto` files under `proto/` into Rust with tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/federator/raft/v1/raft.proto",
        "proto/federator/admin/v1/admin.proto",
        "proto/federator/federation/v1/federation.proto",
    ];
    let spiffe_workload = "proto/spiffe/workload/workload.proto";
    for proto in protos.iter().chain([&spiffe_workload]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The admin API reuses the federation API's service messages. Compiled first: it
    // also writes the federation file, which the second run below overwrites whole.
    // A snapshot's chunks are slices of one buffer (`Bytes`), not a copy each.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".federator.admin.v1.SnapshotChunk.data")
        .extern_path(".federator.federation.v1", "crate::federation")
        .compile_protos(&[protos[1]], &["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[protos[0]], &["proto"])?;
    // The federation API's long-lived watch streams get a small encoding buffer
    // (`crate::codec`); the replica transport keeps tonic's default for its big messages.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_protos(&[protos[2]], &["proto"])?;
    // The SPIFFE Workload API has no package: prost writes it to `_.rs`.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[spiffe_workload], &["proto"])?;
    Ok(())
}
