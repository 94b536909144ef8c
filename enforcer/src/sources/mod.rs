//! Where the daemon learns pods, policies and groups: files (`files`), the Kubernetes
//! API (`kube_api`), EC2 (`ec2_api`, or its mirror's objects through the API:
//! `mirror`); all produce the same model types through the same parsers.
pub mod ec2;
pub mod ec2_api;
pub mod files;
pub mod kube;
pub mod kube_api;
pub mod mirror;
pub mod rule_ids;

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
