//! Node configuration: the enforcer's own file, with the AWS VPC CNI's environment
//! variable names where one exists (SPEC §1).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

#[derive(
    Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Strict,
    Standard,
}

/// `node.enforcement`: whether denied packets are dropped, or reported and passed.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Enforce,
    /// Verdicts computed and reported as ever; packets the rules deny pass ("would
    /// drop"). Fail-closed pods, spoofing and malformed packets stay enforced.
    Audit,
}

/// What happens to a pod that has a branch ENI but no SecurityGroupPolicy selects.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnmatchedPods {
    /// Drop all but the always-allowed traffic, and say so in status.
    #[default]
    FailClosed,
    /// Give it the node's security groups, as AWS does for a non-branch pod.
    NodeGroups,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp: u64,
    pub udp_stream: u64,
    pub icmp: u64,
    pub other: u64,
    /// Half-open TCP while the pod holds more than half its flow share (a SYN flood).
    #[serde(default = "syn_pressure")]
    pub tcp_syn_sent_under_pressure: u64,
}

fn syn_pressure() -> u64 {
    5
}

impl Default for Timeouts {
    /// EC2's defaults where EC2 documents one; half-open TCP, closing TCP and ICMP are
    /// our choice (docs/SEMANTICS.md).
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 60,
            tcp_established: 432_000,
            tcp_closing: 60,
            udp: 30,
            udp_stream: 180,
            icmp: 30,
            other: 600,
            tcp_syn_sent_under_pressure: syn_pressure(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quotas {
    pub groups_per_pod: usize,
    pub rules_per_group_per_family: usize,
    pub rules_per_pod: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            groups_per_pod: 5,
            rules_per_group_per_family: 60,
            rules_per_pod: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSettings {
    pub trunk_interface: String,
    /// The XDP pre-filter on the trunk: drops denied inbound frames (unknown VLAN,
    /// misaddressed, no rule) before the kernel builds an skb. Needs native XDP in the
    /// trunk's driver; without it TC alone enforces the same.
    #[serde(default = "yes")]
    pub trunk_xdp: bool,
    /// MAC the VPC router answers on the trunk; frames toward the VPC go to it.
    #[serde(deserialize_with = "gateway_mac")]
    pub gateway_mac: crate::model::mac::MacAddr,
    #[serde(default)]
    pub enforcing_mode: Option<Mode>,
    #[serde(default, rename = "primaryIPv4")]
    pub primary_ipv4: Option<IpAddr>,
    #[serde(default, rename = "primaryIPv6")]
    pub primary_ipv6: Option<IpAddr>,
    #[serde(default)]
    pub vpc_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub node_groups: Vec<String>,
    /// Extra always-allowed destinations; the VPC resolver (VPC base + 2), 169.254.169.253,
    /// IMDS and time sync are added by default (SPEC §6).
    #[serde(default)]
    pub always_allow: Vec<IpNet>,
    #[serde(default = "yes")]
    pub default_always_allow: bool,
    #[serde(default)]
    pub unmatched_pods: UnmatchedPods,
    /// The EKS cluster's name: `doctor` checks a pod's groups for its
    /// `kubernetes.io/cluster/<name>` tag (any cluster's tag counts without it).
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// `audit`: every pod of the node in audit mode.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Namespaces in audit mode whatever `enforcement` says.
    #[serde(default)]
    pub audit_namespaces: Vec<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub quotas: Quotas,
    /// AWS fixes a pod's groups when the pod is created; by default we apply policy
    /// changes to running pods (SPEC §2). `true` keeps AWS's behaviour.
    #[serde(default)]
    pub freeze_pod_groups: bool,
    /// Host-side interface names are this prefix plus a hash of namespace/name.
    #[serde(default = "default_prefix")]
    pub host_veth_prefix: String,
    /// Flow-table entries one pod may hold; past it the pod's new flows are refused
    /// (`drop_pod_flow_limit`) while other pods keep opening theirs.
    #[serde(default = "default_flows_per_pod")]
    pub flows_per_pod: u32,
    /// The node's primary ENI (`eth0` on EKS): source-NATed traffic leaves through it
    /// and its replies come back on it. Without it (or without `primaryIPv4`) nothing
    /// is source-NATed, as with `externalSnat`.
    #[serde(default)]
    pub primary_interface: Option<String>,
    /// The node's other local addresses pods reach on the node (host-local delivery):
    /// NodeLocal DNSCache and link-local agents. The primary addresses are added.
    #[serde(default = "default_node_local")]
    pub node_local_addresses: Vec<IpNet>,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`: nothing is source-NATed; off-VPC traffic leaves
    /// through the trunk under the pod's groups (a NAT gateway translates it).
    #[serde(default)]
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`: off-VPC destinations never source-NATed.
    #[serde(default)]
    pub exclude_snat_cidrs: Vec<IpNet>,
    /// NAT ports (inclusive). The daemon adds them to the node's
    /// `net.ipv4.ip_local_reserved_ports`, so the node's own sockets never take one.
    #[serde(default)]
    pub snat_ports: SnatPorts,
    /// Random ports tried for a new mapping before the packet is dropped
    /// (`drop_snat_exhausted`).
    #[serde(default = "default_snat_probes")]
    pub snat_probes: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for SnatPorts {
    /// Above Linux's default ephemeral range (32768-60999).
    fn default() -> Self {
        SnatPorts {
            min: 61000,
            max: 65535,
        }
    }
}

/// NodeLocal DNSCache's default address.
fn default_node_local() -> Vec<IpNet> {
    vec!["169.254.20.10/32".parse().expect("a valid prefix")]
}

fn default_snat_probes() -> u32 {
    16
}

/// A sixteenth of the node's table: one pod can't starve the others.
fn default_flows_per_pod() -> u32 {
    enforcer_common::MAX_FLOWS / 16
}

/// The MAC, with the key named in the error (serde names only the enclosing map).
fn gateway_mac<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<crate::model::mac::MacAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e| serde::de::Error::custom(format!("gatewayMac: {e}")))
}

fn yes() -> bool {
    true
}
fn default_prefix() -> String {
    // What the AWS VPC CNI uses for branch-ENI pods.
    "vlan".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub node: NodeSettings,
    /// `aws ec2 describe-security-groups` output.
    #[serde(default)]
    pub security_groups: Vec<PathBuf>,
    /// `aws ec2 describe-security-group-rules` output: names the groups' rules by their
    /// SecurityGroupRuleId (without it, by their place in the group).
    #[serde(default)]
    pub security_group_rules: Vec<PathBuf>,
    /// `{"pl-…": <get-managed-prefix-list-entries output>}`
    #[serde(default)]
    pub prefix_lists: Vec<PathBuf>,
    /// Other known members of groups (interfaces not on this node).
    #[serde(default)]
    pub group_members: BTreeMap<String, Vec<IpAddr>>,
    /// Pods, SecurityGroupPolicies and ServiceAccounts (YAML or JSON).
    #[serde(default)]
    pub kubernetes: Vec<PathBuf>,
    /// The Kubernetes API as a source of Pods, SecurityGroupPolicies and ServiceAccounts
    /// (watched), beside or instead of `kubernetes` files.
    #[serde(default)]
    pub kubernetes_api: Option<crate::sources::kube_api::KubeApiConfig>,
    /// EC2 as the source of security groups, their referenced members and prefix lists
    /// (polled), beside or instead of `securityGroups` files.
    #[serde(default)]
    pub ec2_api: Option<crate::sources::ec2_api::Ec2ApiConfig>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_bpffs")]
    pub bpffs_dir: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; empty: nowhere.
    #[serde(default = "default_http")]
    pub http_address: String,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_http() -> String {
    "0.0.0.0:61680".into()
}

fn default_state_dir() -> PathBuf {
    "/run/podsg".into()
}
fn default_bpffs() -> PathBuf {
    "/sys/fs/bpf/podsg".into()
}

/// What `enforcer run`'s flags set over the config file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `kubernetesApi.nodeName` (a Kubernetes API source with it, if none is configured).
    pub node_name: Option<String>,
    /// `kubernetesApi.kubeconfig` (likewise).
    pub kubeconfig: Option<PathBuf>,
    /// `node.enforcingMode`.
    pub enforcing_mode: Option<Mode>,
    /// `stateDir`.
    pub state_dir: Option<PathBuf>,
}

use crate::env::{
    CLUSTER_NAME as ENV_CLUSTER_NAME, ENFORCING_MODE as ENV_MODE,
    EXCLUDE_SNAT_CIDRS as ENV_EXCLUDE_SNAT, EXTERNAL_SNAT as ENV_EXTERNAL_SNAT,
};

/// Where a destination lies for a pod's traffic (SPEC §5): the `DEST_*` flags of each
/// prefix the daemon writes to `DEST_V4`/`DEST_V6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destinations(pub BTreeMap<IpNet, u32>);

impl Config {
    /// [`Config::load`], then the `enforcer run` flags (they win over the file and the
    /// environment, and hold across reloads).
    pub fn load_with(path: &Path, flags: &Overrides) -> anyhow::Result<Config> {
        let mut cfg = Config::load(path)?;
        if let Some(m) = flags.enforcing_mode {
            cfg.node.enforcing_mode = Some(m);
        }
        if let Some(d) = &flags.state_dir {
            cfg.state_dir = d.clone();
        }
        if flags.node_name.is_some() || flags.kubeconfig.is_some() {
            let api = cfg.kubernetes_api.get_or_insert_with(Default::default);
            if let Some(n) = &flags.node_name {
                api.node_name = Some(n.clone());
            }
            if let Some(k) = &flags.kubeconfig {
                api.kubeconfig = Some(k.clone());
            }
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: Config = serde_yaml::from_str(&text)
            .with_context(|| format!("config {}: invalid", path.display()))?;
        cfg.base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if let Ok(m) = std::env::var(ENV_MODE) {
            cfg.node.enforcing_mode = Some(match m.to_ascii_lowercase().as_str() {
                "strict" => Mode::Strict,
                "standard" => Mode::Standard,
                _ => anyhow::bail!("{ENV_MODE}={m:?}: expected strict or standard"),
            });
        }
        if !(1..=enforcer_common::MAX_FLOWS).contains(&cfg.node.flows_per_pod) {
            anyhow::bail!(
                "config {}: node.flowsPerPod {} is not within 1..={} (the flow table's size)",
                path.display(),
                cfg.node.flows_per_pod,
                enforcer_common::MAX_FLOWS
            );
        }
        if let Ok(v) = std::env::var(ENV_CLUSTER_NAME)
            && !v.is_empty()
        {
            cfg.node.cluster_name = Some(v);
        }
        if let Ok(v) = std::env::var(ENV_EXTERNAL_SNAT) {
            cfg.node.external_snat = match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => anyhow::bail!("{ENV_EXTERNAL_SNAT}={v:?}: expected true or false"),
            };
        }
        if let Ok(v) = std::env::var(ENV_EXCLUDE_SNAT) {
            cfg.node.exclude_snat_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .with_context(|| format!("{ENV_EXCLUDE_SNAT}: {s:?} is not a CIDR"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        let ports = cfg.node.snat_ports;
        if ports.min == 0 || ports.max < ports.min {
            anyhow::bail!(
                "config {}: node.snatPorts {}-{} is not a range of ports (min 1, min <= max)",
                path.display(),
                ports.min,
                ports.max
            );
        }
        if !(1..=enforcer_common::MAX_SNAT_PROBES).contains(&cfg.node.snat_probes) {
            anyhow::bail!(
                "config {}: node.snatProbes {} is not within 1..={}",
                path.display(),
                cfg.node.snat_probes,
                enforcer_common::MAX_SNAT_PROBES
            );
        }
        let dest = cfg.destinations();
        for v6 in [false, true] {
            let n = dest
                .0
                .keys()
                .filter(|k| matches!(k, IpNet::V6(_)) == v6)
                .count();
            if n > enforcer_common::MAX_DEST_ENTRIES as usize {
                anyhow::bail!(
                    "config {}: {n} node-local, VPC and SNAT-excluded prefixes for IPv{}, more than the {} the datapath holds (node.nodeLocalAddresses, node.vpcCidrs, node.excludeSnatCidrs)",
                    path.display(),
                    if v6 { 6 } else { 4 },
                    enforcer_common::MAX_DEST_ENTRIES
                );
            }
        }
        if let Some(IpAddr::V6(a)) = cfg.node.primary_ipv4 {
            anyhow::bail!(
                "config {}: node.primaryIPv4 {a} is an IPv6 address",
                path.display()
            );
        }
        if let Some(IpAddr::V4(a)) = cfg.node.primary_ipv6 {
            anyhow::bail!(
                "config {}: node.primaryIPv6 {a} is an IPv4 address",
                path.display()
            );
        }
        Ok(cfg)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Whether standard-mode pods' off-VPC IPv4 traffic is source-NATed here: not with
    /// external SNAT, and only with a primary interface and address to NAT to.
    pub fn snat_enabled(&self) -> bool {
        !self.node.external_snat
            && self.node.primary_interface.is_some()
            && matches!(self.node.primary_ipv4, Some(IpAddr::V4(_)))
    }

    /// The node's own addresses: its primary addresses and the node-local ones.
    pub fn node_addresses(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = [self.node.primary_ipv4, self.node.primary_ipv6]
            .into_iter()
            .flatten()
            .map(IpNet::from)
            .collect();
        out.extend(self.node.node_local_addresses.iter().copied());
        out.sort();
        out.dedup();
        out
    }

    /// Every prefix of `DEST_V4`/`DEST_V6` with its flags: the node's addresses (host
    /// delivery, never NATed), the VPC and the exclusions (never NATed), and everything
    /// when nothing is to be NATed here.
    pub fn destinations(&self) -> Destinations {
        use enforcer_common::{DEST_NO_SNAT, DEST_NODE};
        let mut m = BTreeMap::new();
        let mut add = |n: IpNet, f: u32| *m.entry(n.trunc()).or_insert(0) |= f;
        for n in self.node_addresses() {
            add(n, DEST_NODE | DEST_NO_SNAT);
        }
        for n in self
            .node
            .vpc_cidrs
            .iter()
            .chain(&self.node.exclude_snat_cidrs)
        {
            add(*n, DEST_NO_SNAT);
        }
        if !self.snat_enabled() {
            add("0.0.0.0/0".parse().expect("a valid prefix"), DEST_NO_SNAT);
        }
        Destinations(m)
    }

    pub fn mode(&self) -> Mode {
        self.node.enforcing_mode.unwrap_or_default()
    }

    /// Whether pods of `namespace` are in audit mode.
    pub fn audit(&self, namespace: &str) -> bool {
        self.node.enforcement == Enforcement::Audit
            || self.node.audit_namespaces.iter().any(|n| n == namespace)
    }

    /// SPEC §6: the explicit list of destinations no group can filter.
    pub fn always_allowed(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        if self.node.default_always_allow {
            for c in &self.node.vpc_cidrs {
                if let IpNet::V4(n) = c {
                    let base = u32::from(n.network());
                    out.push(IpNet::from(IpAddr::V4(std::net::Ipv4Addr::from(base + 2))));
                }
            }
            for a in [
                "169.254.169.253/32",
                "169.254.169.254/32",
                "169.254.169.123/32",
                "fd00:ec2::253/128",
                "fd00:ec2::254/128",
                "fd00:ec2::123/128",
            ] {
                out.push(a.parse().unwrap());
            }
        }
        out.extend(self.node.always_allow.iter().copied());
        out.sort();
        out.dedup();
        out
    }
}

/// Whether `name` has the shape of a branch pod's host interface: `prefix` and 11
/// lowercase hex digits (see [`host_veth_name`]).
pub fn is_host_veth_name(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 11
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Name of a pod's host-side interface, as the AWS VPC CNI derives it: the prefix and
/// the first 11 hex digits of SHA-1("namespace.name").
pub fn host_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_match_the_aws_vpc_cni() {
        // Reference value from Python's hashlib: sha1(b"my-namespace.my-deployment-0").
        assert_eq!(
            host_veth_name("vlan", "my-namespace", "my-deployment-0"),
            "vlan87953dc27b8"
        );
        assert!(host_veth_name("vlan", "ns", "pod").len() <= 15, "IFNAMSIZ");
        assert!(is_host_veth_name("vlan", "vlan87953dc27b8"));
        for other in [
            "vlan87953dc27b",
            "vlan87953dc27b8a",
            "vlan.eth.1",
            "eth0",
            "vlanXYZ53dc27b8",
        ] {
            assert!(!is_host_veth_name("vlan", other), "{other}");
        }
    }

    fn dest(extra: &str) -> Destinations {
        let cfg: Config = serde_yaml::from_str(&format!(
            "node: {{trunkInterface: t, gatewayMac: '02:00:00:00:00:01', vpcCidrs: [10.0.0.0/16], primaryIPv4: 10.0.0.10, primaryIPv6: 'fd00::10'{extra}}}"
        ))
        .unwrap();
        cfg.destinations()
    }

    #[test]
    fn destinations_place_the_node_the_vpc_and_the_exclusions() {
        use enforcer_common::{DEST_NO_SNAT, DEST_NODE};
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let d = dest(", primaryInterface: eth0, excludeSnatCidrs: [192.0.2.0/24]");
        assert_eq!(
            d.0[&net("10.0.0.10/32")],
            DEST_NODE | DEST_NO_SNAT,
            "the node"
        );
        assert_eq!(d.0[&net("fd00::10/128")], DEST_NODE | DEST_NO_SNAT);
        assert_eq!(
            d.0[&net("169.254.20.10/32")],
            DEST_NODE | DEST_NO_SNAT,
            "NodeLocal DNS"
        );
        assert_eq!(d.0[&net("10.0.0.0/16")], DEST_NO_SNAT, "the VPC");
        assert_eq!(d.0[&net("192.0.2.0/24")], DEST_NO_SNAT, "excluded");
        assert!(!d.0.contains_key(&net("0.0.0.0/0")), "the rest is off-VPC");
        // No source NAT here: everything is marked never-translated.
        for off in [", primaryInterface: eth0, externalSnat: true", ""] {
            assert_eq!(dest(off).0[&net("0.0.0.0/0")], DEST_NO_SNAT, "{off:?}");
        }
    }

    #[test]
    fn always_allowed_includes_vpc_resolver() {
        let cfg: Config = serde_yaml::from_str(
            "node: {trunkInterface: t, gatewayMac: '02:00:00:00:00:01', vpcCidrs: [10.0.0.0/16]}",
        )
        .unwrap();
        let l = cfg.always_allowed();
        assert!(l.contains(&"10.0.0.2/32".parse().unwrap()));
        assert!(l.contains(&"169.254.169.253/32".parse().unwrap()));
    }

    #[test]
    fn run_flags_win_over_the_file_and_hold_its_other_settings() {
        let dir = std::env::temp_dir().join(format!("podsg-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "node: {trunkInterface: t, gatewayMac: '02:00:00:00:00:01', enforcingMode: strict}\nkubernetesApi: {nodeName: from-file}\n",
        )
        .unwrap();
        let flags = Overrides {
            node_name: Some("from-flag".into()),
            kubeconfig: Some("/k".into()),
            enforcing_mode: Some(Mode::Standard),
            state_dir: None,
        };
        let c = Config::load_with(&path, &flags).unwrap();
        let api = c.kubernetes_api.unwrap();
        assert_eq!(api.node_name.as_deref(), Some("from-flag"));
        assert_eq!(api.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.node.enforcing_mode, Some(Mode::Standard));
        assert_eq!(c.node.trunk_interface, "t", "the rest from the file");
        let plain = Config::load_with(&path, &Overrides::default()).unwrap();
        assert_eq!(
            plain.kubernetes_api.unwrap().node_name.as_deref(),
            Some("from-file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
