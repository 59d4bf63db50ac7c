//! The lab's etcd: a control-plane host on the underlay (its own namespace, one link on the lab
//! bridge) runs Debian's etcd with TLS — a lab CA, a server certificate for the host's
//! addresses, and one client certificate per agent and one for the CLI (rcgen). The agents
//! reach it over the underlay as agents on separate machines would; the CLI connects from
//! inside the control-plane namespace.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_state::etcd::{EtcdConfig, EtcdServerOptions, Pki, PkiFiles, ServerTls};

use crate::names::{self, LabNames};
use crate::process::{alive, enter_on_exec, stop_group};
use crate::state::EtcdState;
use crate::LabError;

/// The client name of the CLI's certificate.
const CLI_CLIENT: &str = "cli";

fn pki_dir(lab_dir: &Path) -> std::path::PathBuf {
    lab_dir.join("pki")
}

fn endpoint() -> String {
    format!("https://{}", SocketAddr::new(IpAddr::V4(names::CONTROL_PLANE_IPV4), names::ETCD_CLIENT_PORT))
}

/// Makes the certificates, the control-plane host and starts etcd there; returns when etcd
/// answers the CLI over TLS.
pub async fn start(names: &LabNames, nodes: &[String], cgroup: &Path, timeout: Duration) -> Result<EtcdState, LabError> {
    let dir = names.dir();
    let clients: Vec<&str> = std::iter::once(CLI_CLIENT).chain(nodes.iter().map(String::as_str)).collect();
    let pki = Pki::create(&pki_dir(&dir), &[IpAddr::V4(names::CONTROL_PLANE_IPV4), IpAddr::V6(names::CONTROL_PLANE_IPV6)], &clients)
        .map_err(|e| LabError::Invalid(format!("making the lab's certificates: {e}")))?;
    let netns = names.control_plane_netns();
    crate::topology::create_control_plane(names, &netns).await?;
    let client = client_config(&pki, CLI_CLIENT)?;
    let mut state = EtcdState { netns, pid: None, client };
    state.pid = Some(spawn(names, &state, cgroup, timeout).await?);
    Ok(state)
}

/// Stops the lab's etcd and starts it again on the same data (a crash and restart of the
/// control plane); returns the new pid once it answers.
pub async fn restart(names: &LabNames, state: &EtcdState, cgroup: &Path, timeout: Duration) -> Result<i32, LabError> {
    if let Some(pid) = state.pid {
        stop_group(pid, Duration::from_secs(5));
    }
    spawn(names, state, cgroup, timeout).await
}

/// Starts etcd in the control-plane namespace with the lab's certificates and data; returns
/// its pid once it answers the CLI.
async fn spawn(names: &LabNames, state: &EtcdState, cgroup: &Path, timeout: Duration) -> Result<i32, LabError> {
    let dir = names.dir();
    let pki = pki_dir(&dir);
    let options = EtcdServerOptions {
        binary: None,
        data_dir: dir.join("etcd"),
        name: "lab".into(),
        client_addr: SocketAddr::new(IpAddr::V4(names::CONTROL_PLANE_IPV4), names::ETCD_CLIENT_PORT),
        peer_port: names::ETCD_CLIENT_PORT + 1,
        tls: Some(ServerTls {
            cert_file: pki.join("server.pem"),
            key_file: pki.join("server-key.pem"),
            ca_file: pki.join("ca.pem"),
            client_cert_auth: true,
        }),
        log_file: dir.join("etcd.log"),
        max_txn_ops: 10_000,
        extra_args: Vec::new(),
        start_timeout: timeout,
    };
    let (binary, args) = options.command_line().map_err(|e| LabError::Invalid(e.to_string()))?;
    // etcd wants its data for itself.
    std::fs::create_dir_all(&options.data_dir).map_err(|e| LabError::io("creating etcd's data directory", e))?;
    std::fs::set_permissions(&options.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| LabError::io("restricting etcd's data directory", e))?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&options.log_file).map_err(|e| LabError::io("opening etcd.log", e))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("opening etcd.log", e))?;
    let etcd_cgroup = cgroup.join("etcd");
    crate::cgroup::create(&etcd_cgroup)?;
    let mut cmd = Command::new(&binary);
    cmd.args(&args).stdin(Stdio::null()).stdout(log).stderr(log2);
    enter_on_exec(&mut cmd, &sluice_datapath::netns::named_netns_path(&state.netns), Some(&etcd_cgroup), true)?;
    let child = cmd.spawn().map_err(|e| LabError::io(format!("starting {}", binary.display()), e))?;
    let pid = child.id() as i32;
    wait_ready(state, pid, &options.log_file, timeout).await?;
    Ok(pid)
}

fn client_config(pki: &PkiFiles, client: &str) -> Result<EtcdConfig, LabError> {
    pki.client_config(client, vec![endpoint()]).ok_or_else(|| LabError::Invalid(format!("no certificate for etcd client {client:?}")))
}

/// The etcd section of a node agent's configuration: the endpoint and the node's own
/// certificate.
pub fn agent_etcd_config(lab_dir: &Path, node: &str) -> EtcdConfig {
    let pki = pki_dir(lab_dir);
    let mut config = EtcdConfig::new(vec![endpoint()]);
    config.ca_file = Some(pki.join("ca.pem"));
    config.cert_file = Some(pki.join(format!("{node}.pem")));
    config.key_file = Some(pki.join(format!("{node}-key.pem")));
    config
}

async fn wait_ready(state: &EtcdState, pid: i32, log: &Path, timeout: Duration) -> Result<(), LabError> {
    let store = sluice_state::Datastore::Etcd(sluice_state::EtcdAccess {
        config: state.client.clone(),
        netns: Some(sluice_datapath::netns::named_netns_path(&state.netns)),
    });
    let started = Instant::now();
    loop {
        let err = match store.load() {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !alive(pid) || started.elapsed() > timeout {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(LabError::Invalid(format!(
                "the lab's etcd did not answer within {timeout:?} ({err}); log {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops etcd and removes the control-plane host; what is gone is skipped.
pub async fn stop(names: &LabNames, state: &EtcdState) -> Result<(), LabError> {
    if let Some(pid) = state.pid {
        stop_group(pid, Duration::from_secs(5));
    }
    crate::topology::delete_node(&names.control_plane_root_side(), &state.netns).await
}
