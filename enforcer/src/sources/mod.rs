//! Where the daemon learns pods, policies and groups. This source is files; the
//! Kubernetes and EC2 API sources produce the same types.
pub mod ec2;
pub mod files;
pub mod kube;

/// Input that cannot be used, with the object it came from.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{object}: {problem}")]
    Invalid { object: String, problem: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
