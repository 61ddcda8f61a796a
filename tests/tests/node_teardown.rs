//! A test node whose process dies outright (SIGKILL, a CI timeout) leaves behind what only a
//! clean exit removes: running containers and their shims, mounts, network namespaces,
//! iptables chains, interfaces, cgroups, changed sysctls. `hack/testnode.sh down`, which every
//! node start runs first, removes all of it from what it finds on the host.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use audit_tests::cargo_bin;
use audit_tests::node::layout;
use audit_tests::testenv::workspace_root;

/// What the kubelet and kube-proxy may change; the values must be back after teardown.
const SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
];

fn sysctls() -> Vec<(String, String)> {
    SYSCTLS
        .iter()
        .map(|name| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            ((*name).to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// Everything of the node's still on the host, one line per kind of thing.
fn leftovers() -> Vec<String> {
    let layout = layout();
    let state = format!("{}/", layout.state_dir.display());
    let mut found = Vec::new();
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&state)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect();
    if !processes.is_empty() {
        found.push(format!("processes: {processes:?}"));
    }
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|mount_point| mount_point.starts_with(&state))
        .map(str::to_owned)
        .collect();
    if !mounts.is_empty() {
        found.push(format!(
            "{} mounts, e.g. {:?}",
            mounts.len(),
            mounts.first()
        ));
    }
    for table in ["filter", "nat"] {
        let rules = Command::new("iptables")
            .args(["-t", table, "-S"])
            .output()
            .expect("iptables");
        let chains = String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|line| line.starts_with("-N KUBE-") || line.starts_with("-N CNI-"))
            .count();
        if chains > 0 {
            found.push(format!("{chains} iptables chains in {table}"));
        }
    }
    for link in ["audit0", "auditbr0"] {
        if Path::new("/sys/class/net").join(link).exists() {
            found.push(format!("interface {link}"));
        }
    }
    if Path::new("/sys/fs/cgroup/memory")
        .join(layout.cgroup_root.trim_start_matches('/'))
        .exists()
    {
        found.push("the pods' cgroup".to_owned());
    }
    if layout.state_dir.exists() {
        found.push(format!("{}", layout.state_dir.display()));
    }
    found
}

#[test]
fn teardown_removes_what_a_killed_node_left_behind() -> anyhow::Result<()> {
    let before = sysctls();
    anyhow::ensure!(
        leftovers().is_empty(),
        "a node is running or left something: {:?}",
        leftovers()
    );

    let mut node = Command::new(cargo_bin("audit-testnode"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = node.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(240));
    node.kill()?;
    node.wait()?;
    ready.map_err(|_| anyhow::anyhow!("audit-testnode did not report a running pod"))?;

    // What a clean exit would have removed is still there: the pod's shim and container,
    // their mounts, the node's chains and interfaces.
    let left = leftovers();
    for expected in [
        "processes",
        "mounts",
        "iptables chains in nat",
        "interface audit0",
    ] {
        assert!(
            left.iter().any(|thing| thing.contains(expected)),
            "a killed node leaves {expected} behind; found {left:?}"
        );
    }

    assert_ne!(sysctls(), before, "the kubelet changed kernel settings");

    let down = Command::new("bash")
        .arg(workspace_root().join("hack/testnode.sh"))
        .arg("down")
        .output()?;
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "teardown removes everything"
    );
    assert_eq!(sysctls(), before, "teardown restores the sysctls");
    Ok(())
}
