//! Named namespaces on a fresh machine, where /run/netns starts as a plain directory: one made
//! there must still be deleted after `ip netns` has made /run/netns a mount point of its own.
//! Runs in a private mount namespace of the test's thread, so the machine's /run/netns mounts
//! are never touched (the files made in the directory are removed by the test).

use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use sluice_datapath::netns::{create_named_netns, delete_named_netns, named_netns_path, NETNS_RUN_DIR};
use sluice_datapath::testing::require_root;

fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

#[test]
fn a_namespace_made_while_run_netns_is_a_plain_directory_is_deleted_after_ip_netns_add() {
    if !require_root("a_namespace_made_while_run_netns_is_a_plain_directory_is_deleted_after_ip_netns_add") {
        return;
    }
    let id = std::process::id();
    let (ours, theirs) = (format!("sluice-t-share-{id}"), format!("sluice-t-iproute-{id}"));
    let (o, t) = (ours.clone(), theirs.clone());
    let outcome = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| format!("making / private: {e}"))?;
        // /run/netns as a fresh machine has it: no mount of its own.
        std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| e.to_string())?;
        while umount2(NETNS_RUN_DIR, MntFlags::MNT_DETACH).is_ok() {}
        assert!(!mount_points().iter().any(|m| m == NETNS_RUN_DIR), "{NETNS_RUN_DIR} starts as a plain directory");

        create_named_netns(&o).map_err(|e| e.to_string())?;
        assert!(mount_points().iter().any(|m| m == NETNS_RUN_DIR), "making a namespace makes {NETNS_RUN_DIR} a mount point first");
        // iproute2 after us: it binds /run/netns on itself when it is no mount point.
        let added = Command::new("ip").args(["netns", "add", &t]).status().map_err(|e| format!("running ip: {e}"))?;
        assert!(added.success(), "ip netns add {t}");
        let deleted = delete_named_netns(&o).map_err(|e| e.to_string());
        let _ = Command::new("ip").args(["netns", "del", &t]).status();
        deleted?;
        assert!(!named_netns_path(&o).exists(), "the namespace file is gone");
        Ok(())
    })
    .join();
    // Whatever happened in the thread, leave no file behind in the machine's /run/netns.
    for name in [&ours, &theirs] {
        let path = named_netns_path(name);
        if path.exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
    match outcome {
        Ok(result) => result.expect("create, ip netns add, delete"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
