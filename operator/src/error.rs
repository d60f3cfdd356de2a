//! The operator's one error type; [`Error::metric_label`] names each kind in the
//! `dsm_operator_reconcile_failures_total` metric.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    /// An object could not be (de)serialized.
    #[error("serialization error: {0}")]
    Serialization(#[source] serde_json::Error),
    /// An object lacked a field the API server always sets.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// A node could not be reached over gRPC.
    #[error("cannot reach the DSM node at {address}: {message}")]
    NodeUnreachable {
        /// The address dialled.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// A node answered a gRPC call with an error.
    #[error("DSM node at {address} refused {call}: {status}")]
    NodeRpc {
        /// The address called.
        address: String,
        /// The call (`Status`, `Drain`).
        call: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// A certificate could not be issued.
    #[error("cannot issue a certificate: {0}")]
    Certificate(String),
    /// A Secret the cluster depends on lacks a key or holds something unusable. The
    /// reason names the key, never its content.
    #[error("Secret {secret} is not usable: {reason}")]
    InvalidSecret {
        /// The Secret's name.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Scaling down cannot go on safely (e.g. no active master to drain through).
    #[error("cannot scale down: {0}")]
    ScaleDownBlocked(String),
}

impl Error {
    /// A short, stable name of the error's kind for metric labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Serialization(_) => "serialization",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::NodeUnreachable { .. } => "node_unreachable",
            Error::NodeRpc { .. } => "node_rpc",
            Error::Certificate(_) => "certificate",
            Error::InvalidSecret { .. } => "invalid_secret",
            Error::ScaleDownBlocked(_) => "scale_down_blocked",
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
