//! The node's fixed names and addresses, read from `hack/testnode.env`, which the setup
//! script sources too: one place for both.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

const TESTNODE_ENV: &str = include_str!("../../../hack/testnode.env");

/// What `hack/testnode.env` declares.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Everything the node writes; removed by teardown.
    pub state_dir: PathBuf,
    /// The Node object's name.
    pub name: String,
    /// The kubelet's node IP, where the API server and NATS listen for pods.
    pub node_ip: Ipv4Addr,
    /// The pods' network.
    pub pod_cidr: String,
    /// The Service network.
    pub service_cidr: String,
    /// The `kubernetes` Service's address.
    pub kubernetes_service_ip: Ipv4Addr,
    /// The cgroup that holds the pods.
    pub cgroup_root: String,
}

/// The layout, parsed once.
pub fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| parse(TESTNODE_ENV).expect("hack/testnode.env is well formed"))
}

fn parse(text: &str) -> anyhow::Result<Layout> {
    let values: std::collections::HashMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let get = |key: &str| {
        values
            .get(key)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("hack/testnode.env lacks {key}"))
    };
    Ok(Layout {
        state_dir: PathBuf::from(get("TESTNODE_STATE_DIR")?),
        name: get("TESTNODE_NAME")?.to_owned(),
        node_ip: get("TESTNODE_IP")?.parse()?,
        pod_cidr: get("TESTNODE_POD_CIDR")?.to_owned(),
        service_cidr: get("TESTNODE_SERVICE_CIDR")?.to_owned(),
        kubernetes_service_ip: get("TESTNODE_KUBERNETES_SERVICE_IP")?.parse()?,
        cgroup_root: get("TESTNODE_CGROUP_ROOT")?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_is_in_the_range_reserved_for_network_tests() {
        let layout = layout();
        let in_198_18_slash_15 =
            |ip: Ipv4Addr| ip.octets()[0] == 198 && ip.octets()[1] & 0xfe == 18;
        assert!(in_198_18_slash_15(layout.node_ip), "{layout:?}");
        assert!(
            in_198_18_slash_15(layout.kubernetes_service_ip),
            "{layout:?}"
        );
        for cidr in [&layout.pod_cidr, &layout.service_cidr] {
            let (network, _) = cidr.split_once('/').expect("a CIDR");
            assert!(in_198_18_slash_15(network.parse().unwrap()), "{cidr}");
        }
        assert!(layout.state_dir.is_absolute());
    }
}
