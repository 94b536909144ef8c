//! What the CNI does for a pod: its namespace's veth pair, addresses, routes and gateway
//! neighbour; and the pods' Kubernetes objects with their branch-ENI annotations.
use anyhow::{Context, Result};
use enforcer::config::host_veth_name;

use super::netns::{ip, ip_root};
use super::{SIM_VETH_PREFIX, SimNode};

#[derive(Clone, Debug)]
pub struct SimPod {
    pub namespace: String,
    pub name: String,
    pub mac: String,
    pub ipv4: String,
    pub ipv6: String,
    pub vlan: u16,
}

impl SimPod {
    pub fn annotation(&self) -> String {
        format!(
            r#"[{{"eniId":"eni-{}","ifAddress":"{}","privateIp":"{}","ipv6Addr":"{}","vlanId":{},"subnetCidr":"10.0.1.0/24","subnetV6Cidr":"fd00:10:1::/64"}}]"#,
            self.name, self.mac, self.ipv4, self.ipv6, self.vlan
        )
    }
}

impl SimNode {
    /// The pod's veth pair, addresses, routes and gateway neighbour, and the node's route
    /// and neighbour for the pod: what the CNI does when a pod starts.
    pub(super) fn connect_pod(&self, p: &SimPod, pns: &str) -> Result<()> {
        let node = &self.node_ns;
        let host = host_veth_name(SIM_VETH_PREFIX, &p.namespace, &p.name);
        let host_mac = format!("02:ee:00:00:{:02x}:{:02x}", p.vlan >> 8, p.vlan & 0xff);
        ip_root(&format!(
            "link add {host} netns {node} type veth peer name eth0 netns {pns}"
        ))?;
        ip(node, &format!("link set {host} address {host_mac} up"))?;
        ip(pns, &format!("link set eth0 address {} up", p.mac))?;
        ip(pns, &format!("addr add {}/32 dev eth0", p.ipv4))?;
        ip(pns, &format!("addr add {}/128 dev eth0 nodad", p.ipv6))?;
        // The AWS VPC CNI's pod gateway: 169.254.1.1 / fe80::1 at the host veth's MAC,
        // permanent, so the pod never ARPs.
        ip(pns, "route add 169.254.1.1 dev eth0 scope link")?;
        ip(pns, "route add default via 169.254.1.1 dev eth0")?;
        ip(
            pns,
            &format!("neigh replace 169.254.1.1 lladdr {host_mac} dev eth0 nud permanent"),
        )?;
        ip(pns, "-6 route add default via fe80::1 dev eth0")?;
        ip(
            pns,
            &format!("-6 neigh replace fe80::1 lladdr {host_mac} dev eth0 nud permanent"),
        )?;
        // The node reaches the pod on its host interface (kubelet probes, NodeLocal
        // DNSCache replies), never through the VPC; the neighbour is permanent, as the
        // pod's gateway is (the programs drop ARP both ways).
        ip(node, &format!("route add {}/32 dev {host}", p.ipv4))?;
        ip(node, &format!("-6 route add {}/128 dev {host}", p.ipv6))?;
        ip(
            node,
            &format!(
                "neigh replace {} lladdr {} dev {host} nud permanent",
                p.ipv4, p.mac
            ),
        )?;
        ip(
            node,
            &format!(
                "-6 neigh replace {} lladdr {} dev {host} nud permanent",
                p.ipv6, p.mac
            ),
        )?;
        Self::sysctl(
            pns,
            &[
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.eth0.accept_redirects=0",
            ],
        )
    }

    fn sim_pod(&self, name: &str) -> Result<&(SimPod, String)> {
        self.pods
            .iter()
            .find(|(p, _)| p.name == name)
            .with_context(|| format!("no simulated pod {name}"))
    }

    /// Removes a pod's veth pair, as the CNI does when the pod's sandbox goes away.
    pub fn disconnect_pod(&self, name: &str) -> Result<()> {
        let (p, _) = self.sim_pod(name)?;
        let host = host_veth_name(SIM_VETH_PREFIX, &p.namespace, &p.name);
        ip(&self.node_ns, &format!("link del {host}"))?;
        Ok(())
    }

    /// Sets a disconnected pod up again (a new host interface, with a new ifindex).
    pub fn reconnect_pod(&self, name: &str) -> Result<()> {
        let (p, pns) = self.sim_pod(name)?;
        self.connect_pod(p, pns)
    }
}

/// Kubernetes objects for the simulated pods: each with its branch-ENI annotation.
pub fn pods_yaml(pods: &[SimPod], labels: &dyn Fn(&SimPod) -> String) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\n  annotations:\n    vpc.amazonaws.com/pod-eni: '{}'\n",
                p.name,
                p.namespace,
                labels(p),
                p.annotation()
            )
        })
        .collect()
}

/// The n-th simulated branch pod: 10.0.1.(10+n), VLAN 10+n.
pub fn sim_pod(namespace: &str, name: &str, n: u16) -> SimPod {
    SimPod {
        namespace: namespace.into(),
        name: name.into(),
        mac: format!("02:00:00:00:{:02x}:{:02x}", (10 + n) >> 8, (10 + n) & 0xff),
        ipv4: format!("10.0.1.{}", 10 + n),
        ipv6: format!("fd00:10:1::{:x}", 0x10 + n),
        vlan: 10 + n,
    }
}
