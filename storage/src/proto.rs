//! The generated protobuf types and gRPC services (etcd v3 wire-compatible).
#![allow(missing_docs, clippy::all)]

/// etcd's `mvccpb` package: keys, values and watch events.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's `etcdserverpb` package: requests, responses and the gRPC services.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// keel's internal log commands.
pub mod keelpb {
    include!(concat!(env!("OUT_DIR"), "/keelpb.rs"));
}
