//! The generated protobuf types and gRPC services (etcd v3 wire-compatible).
#![allow(missing_docs, clippy::all)]

/// etcd's `mvccpb` package: keys, values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: requests, responses and the gRPC services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// keel's internal log commands.
pub mod keelpb {
    tonic::include_proto!("keelpb");
}
