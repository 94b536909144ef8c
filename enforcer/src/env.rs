//! Every environment variable the enforcer itself reads, once. The AWS VPC CNI's names
//! where it has one (an aws-node DaemonSet's settings carry over); the deploy test
//! checks that `deploy/daemonset.yaml` sets no other.

/// `strict` or `standard`: mode of pods first seen from now on (wins over the file).
pub const ENFORCING_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
/// `true`: nothing is source-NATed (an external NAT device does it).
pub const EXTERNAL_SNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
/// Comma-separated CIDRs never source-NATed.
pub const EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
/// The EKS cluster's name (the VPC CNI's `CLUSTER_NAME`): `node.clusterName`.
pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
/// This node's name (a DaemonSet sets it from `spec.nodeName`): whose Pods to watch.
pub const NODE_NAME: &str = "NODE_NAME";
/// `enforcer mirror`: this replica's name in the lease (from `metadata.name`).
pub const POD_NAME: &str = "POD_NAME";
/// Log filter (env_logger): `info`, `debug`, `enforcer=debug`...
pub const LOG: &str = "RUST_LOG";

/// All of the above, for the deploy test and `enforcer env`.
pub const ALL: [&str; 7] = [
    ENFORCING_MODE,
    EXTERNAL_SNAT,
    EXCLUDE_SNAT_CIDRS,
    CLUSTER_NAME,
    NODE_NAME,
    POD_NAME,
    LOG,
];
