//! Wire definitions of vouch.
//!
//! [`containerd`] holds clients of the small part of containerd's API the agent reads.
//!
//! [`workload`] is the SPIFFE Workload API (SPIFFE_Workload_API.md, section 3), generated from
//! `proto/workload.proto` by prost/tonic and checked in, so building vouch needs neither `protoc`
//! nor a build script. `tests/generated.rs` regenerates it with protox and fails on any difference;
//! after changing the .proto run `VOUCH_REGENERATE=1 cargo test -p vouch-proto` to update it.

/// The SPIFFE Workload API: messages, the `SpiffeWorkloadApi` server trait and a client.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod workload {
    include!("workload.rs");
}

/// Clients of the parts of containerd's API the agent reads (containers, images, content), for
/// container selectors. Requests carry the namespace in the `containerd-namespace` metadata.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod containerd {
    /// `containerd.services.containers.v1`.
    pub mod containers {
        include!("containerd_containers.rs");
    }
    /// `containerd.services.images.v1`.
    pub mod images {
        include!("containerd_images.rs");
    }
    /// `containerd.services.content.v1`.
    pub mod content {
        include!("containerd_content.rs");
    }
}

/// gRPC metadata key every Workload API request must carry with value `true` (SPIFFE Workload API
/// standard, section 4.1): it proves the caller is a client of the Workload API, not a browser or
/// another protocol tricked into talking to the socket.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A gRPC channel to a server on a Unix socket (the agent's Workload API, containerd).
pub async fn uds_channel(
    path: impl Into<std::path::PathBuf>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.into();
    // The URI is required by the API but unused: every connection goes to `path`.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
