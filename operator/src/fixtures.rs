//! Test fixtures: DsmCluster builders shared by the unit tests.

use kube::api::ObjectMeta;

use crate::crd::{DsmCluster, DsmClusterSpec, DsmClusterStatus};

/// A DsmCluster named `test` in namespace `testns`, as the API server would return it.
pub fn test_cluster(spec: DsmClusterSpec) -> DsmCluster {
    let mut dc = DsmCluster::new("test", spec);
    dc.metadata = ObjectMeta {
        name: Some("test".to_string()),
        namespace: Some("testns".to_string()),
        uid: Some("0b5e33c8-6a8b-4b5c-9c1d-5f0f7a1c2d3e".to_string()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    dc
}

impl DsmCluster {
    /// The same cluster with a status.
    pub fn with_status(mut self, status: DsmClusterStatus) -> Self {
        self.status = Some(status);
        self
    }
}
