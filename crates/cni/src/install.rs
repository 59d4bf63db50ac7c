//! `sluice-cni install` and `sluice-cni uninstall`: what a cluster's init step runs on each node
//! (the DaemonSet's init container) to put the plugin where the runtime looks for it and the
//! network configuration that names it. Both files are written atomically (a temporary file in
//! the same directory, synced, then renamed over the target), so a runtime reading the
//! directory mid-install sees the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The configuration's file name: `05-` sorts it before most other networks' files, since a
/// runtime uses the first configuration in lexical order.
pub const CONFLIST_NAME: &str = "05-sluice.conflist";
/// The network's name in the configuration; `uninstall` removes only a file of this name.
pub const NETWORK_NAME: &str = "sluice";

/// Where to install, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub mtu: Option<u32>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            bin_dir: PathBuf::from("/opt/cni/bin"),
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            agent_socket: PathBuf::from(crate::config::DEFAULT_AGENT_SOCKET),
            mtu: None,
        }
    }
}

/// Parses `--bin-dir D --conf-dir D --agent-socket P --mtu N`; anything else is an error that
/// names it.
pub fn parse_options(args: &[String]) -> Result<InstallOptions, String> {
    let mut options = InstallOptions::default();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bin-dir" => options.bin_dir = value()?.into(),
            "--conf-dir" => options.conf_dir = value()?.into(),
            "--agent-socket" => options.agent_socket = value()?.into(),
            "--mtu" => {
                let text = value()?;
                let mtu: u32 = text.parse().map_err(|_| format!("--mtu {text}: not a number"))?;
                if !(1280..=65535).contains(&mtu) {
                    return Err(format!("--mtu {mtu}: outside 1280..=65535 (IPv6 needs at least 1280)"));
                }
                options.mtu = Some(mtu);
            }
            other => return Err(format!("unknown option {other:?} (options: --bin-dir, --conf-dir, --agent-socket, --mtu)")),
        }
    }
    Ok(options)
}

/// The network configuration list the runtime reads.
pub fn conflist(options: &InstallOptions) -> serde_json::Value {
    let mut plugin = serde_json::json!({"type": "sluice-cni", "agentSocket": options.agent_socket});
    if let Some(mtu) = options.mtu {
        plugin["mtu"] = mtu.into();
    }
    serde_json::json!({"cniVersion": "1.1.0", "name": NETWORK_NAME, "plugins": [plugin]})
}

/// Copies `plugin` (this binary) into the bin directory and writes the configuration; returns
/// the two paths written.
pub fn install(plugin: &Path, options: &InstallOptions) -> Result<(PathBuf, PathBuf), String> {
    let binary = std::fs::read(plugin).map_err(|e| format!("reading the plugin {}: {e}", plugin.display()))?;
    let bin = options.bin_dir.join("sluice-cni");
    write_atomically(&bin, &binary, 0o755)?;
    let text = serde_json::to_vec_pretty(&conflist(options)).map_err(|e| format!("encoding the configuration: {e}"))?;
    let conf = options.conf_dir.join(CONFLIST_NAME);
    write_atomically(&conf, &text, 0o644)?;
    Ok((bin, conf))
}

/// Removes the configuration (when it is Sluice's) and the plugin; returns what was removed.
/// Files already gone are not an error: uninstalling twice is uninstalling once.
pub fn uninstall(options: &InstallOptions) -> Result<Vec<PathBuf>, String> {
    let mut removed = Vec::new();
    let conf = options.conf_dir.join(CONFLIST_NAME);
    match std::fs::read(&conf) {
        Ok(text) => {
            let ours = serde_json::from_slice::<serde_json::Value>(&text).is_ok_and(|v| v["name"] == NETWORK_NAME);
            if !ours {
                return Err(format!("{} does not name the network {NETWORK_NAME:?}; it is left alone", conf.display()));
            }
            remove(&conf, &mut removed)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", conf.display())),
    }
    remove(&options.bin_dir.join("sluice-cni"), &mut removed)?;
    Ok(removed)
}

fn remove(path: &Path, removed: &mut Vec<PathBuf>) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            removed.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, sets `mode` and renames it over
/// `path`; the directory is made when missing. On failure the temporary file is removed and
/// `path` is as it was.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InstallOptions {
        InstallOptions {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            agent_socket: "/run/sluice/agent.sock".into(),
            mtu: Some(1450),
        }
    }

    #[test]
    fn install_writes_the_plugin_and_a_configuration_the_plugin_reads() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("built-plugin");
        std::fs::write(&plugin, b"\x7fELF plugin bytes").unwrap();
        let (bin, conf) = install(&plugin, &options(dir.path())).unwrap();
        assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF plugin bytes");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bin).unwrap().permissions()) & 0o777, 0o755);
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
        assert_eq!(list["name"], "sluice");
        // What a runtime hands the plugin: the list's version and name with one plugin's keys.
        let mut net = list["plugins"][0].clone();
        net["cniVersion"] = list["cniVersion"].clone();
        net["name"] = list["name"].clone();
        let parsed = crate::config::NetConf::parse(net.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.agent_socket, PathBuf::from("/run/sluice/agent.sock"));
        assert_eq!(parsed.mtu, Some(1450));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("net.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(CONFLIST_NAME)], "no temporary file left");
    }

    #[test]
    fn install_replaces_and_uninstall_removes_only_what_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("built-plugin");
        std::fs::write(&plugin, b"v1").unwrap();
        let opts = options(dir.path());
        install(&plugin, &opts).unwrap();
        std::fs::write(&plugin, b"v2").unwrap();
        let (bin, conf) = install(&plugin, &opts).unwrap();
        assert_eq!(std::fs::read(&bin).unwrap(), b"v2", "a second install replaces the plugin");

        let other = opts.conf_dir.join("10-other.conflist");
        std::fs::write(&other, br#"{"name":"other"}"#).unwrap();
        let removed = uninstall(&opts).unwrap();
        assert_eq!(removed, vec![conf.clone(), bin.clone()]);
        assert!(other.exists(), "another network's configuration stays");
        assert_eq!(uninstall(&opts).unwrap(), Vec::<PathBuf>::new(), "uninstalling twice is uninstalling once");

        // A file of our name that is not ours is left alone, with an error that says so.
        std::fs::write(&conf, br#"{"name":"someone-else"}"#).unwrap();
        let error = uninstall(&opts).unwrap_err();
        assert!(error.contains("left alone") && conf.exists(), "{error}");
    }

    #[test]
    fn bad_options_are_named() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_options(&args(&[])).unwrap(), InstallOptions::default());
        let o = parse_options(&args(&["--bin-dir", "/b", "--conf-dir", "/c", "--agent-socket", "/s", "--mtu", "9000"])).unwrap();
        assert_eq!((o.bin_dir, o.conf_dir, o.agent_socket, o.mtu), ("/b".into(), "/c".into(), "/s".into(), Some(9000)));
        for (bad, names) in [(&["--mtu", "100"][..], "--mtu 100"), (&["--mtu"][..], "--mtu needs a value"), (&["--bogus"][..], "--bogus")] {
            let error = parse_options(&args(bad)).unwrap_err();
            assert!(error.contains(names), "{bad:?}: {error}");
        }
    }
}
