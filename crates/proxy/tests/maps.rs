//! The proxy against real maps (root only): an `ipcache` LPM trie and a `policy_ct` LRU hash of
//! the ABI's sizes, created and pinned in a bpffs of the test's own, read and written through
//! the proxy's map types.

// A failed expect is a failed test, and its message says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use sluice_datapath::policy::ipcache_key;
use sluice_proxy::flows::{proxy_ct_entry, proxy_ct_key, PolicyConntrack};
use sluice_proxy::identity::Ipcache;
use sluice_proxy::{FlowTable, IdentitySource};

/// A bpffs mounted on a temporary directory, unmounted on drop.
struct Bpffs(tempfile::TempDir);

impl Bpffs {
    fn mount() -> Bpffs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(Some("bpffs"), dir.path(), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Creates a map with `bpf(BPF_MAP_CREATE)` and pins it at `path`.
fn create_pinned(path: &Path, map_type: u32, key_size: usize, value_size: usize, flags: u32) {
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[map_type, key_size as u32, value_size as u32, 64, flags]);
    // SAFETY: BPF_MAP_CREATE reads a bpf_attr of the given size; the buffer is that large and
    // zeroed past the fields set.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 4];
    pin[0] = path.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: BPF_OBJ_PIN reads the pathname pointer (alive for the call) and the fd.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_mut_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: fd was returned by BPF_MAP_CREATE above and is closed once; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

const LPM_TRIE: u32 = 11;
const LRU_HASH: u32 = 9;
const NO_PREALLOC: u32 = 1;

fn make_maps(dir: &Path) {
    create_pinned(
        &dir.join("ipcache"),
        LPM_TRIE,
        size_of::<sluice_abi::ipcache_key>(),
        size_of::<sluice_abi::ipcache_entry>(),
        NO_PREALLOC,
    );
    create_pinned(&dir.join("policy_ct"), LRU_HASH, size_of::<sluice_abi::ct_key>(), size_of::<sluice_abi::policy_ct_entry>(), 0);
}

#[test]
fn ipcache_lookups_and_policy_ct_writes_on_real_maps() {
    if !sluice_datapath::testing::require_root("ipcache_lookups_and_policy_ct_writes_on_real_maps") {
        return;
    }
    let fs = Bpffs::mount();
    make_maps(fs.0.path());

    // 10.244.0.0/16 -> 777, written as the agent does: prefixlen counts family and pad.
    let key = ipcache_key("10.244.0.0/16".parse().unwrap());
    let mut trie: LpmTrie<MapData, [u8; 20], [u8; 8]> =
        LpmTrie::try_from(Map::LpmTrie(MapData::from_pin(fs.0.path().join("ipcache")).unwrap())).unwrap();
    let mut data = [0u8; 20];
    data[0] = key.family;
    data[4..].copy_from_slice(&key.addr);
    let mut value = [0u8; 8];
    value[..4].copy_from_slice(&777u32.to_ne_bytes());
    trie.insert(&Key::new(key.prefixlen, data), value, 0).unwrap();

    let ipcache = Ipcache::open(fs.0.path()).unwrap();
    assert_eq!(ipcache.identity("10.244.1.7".parse().unwrap()).unwrap(), 777, "an address under the prefix has its identity");
    assert_eq!(ipcache.identity("10.245.0.1".parse().unwrap()).unwrap(), sluice_abi::SLUICE_IDENTITY_WORLD, "a miss is world");
    assert_eq!(ipcache.identity("fd00::1".parse().unwrap()).unwrap(), sluice_abi::SLUICE_IDENTITY_WORLD, "IPv6 lookups work too");
    assert_eq!(ipcache.identity("::ffff:10.244.1.7".parse().unwrap()).unwrap(), 777, "a v4-mapped address is looked up as IPv4");

    let ct = PolicyConntrack::open(fs.0.path()).unwrap();
    let key = proxy_ct_key("10.244.0.5:40000".parse().unwrap(), "10.244.1.7:80".parse().unwrap()).unwrap();
    ct.insert(&key, &proxy_ct_entry()).unwrap();
    let raw: aya::maps::HashMap<MapData, [u8; 40], [u8; 16]> =
        aya::maps::HashMap::try_from(Map::LruHashMap(MapData::from_pin(fs.0.path().join("policy_ct")).unwrap())).unwrap();
    let keys: Vec<[u8; 40]> = raw.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 1, "one entry written");
    assert_eq!(&keys[0][..4], &[10, 244, 0, 5], "saddr first");
    assert_eq!(&keys[0][32..34], &40000u16.to_be_bytes(), "sport in network order");
    let entry = raw.get(&keys[0], 0).unwrap();
    assert_eq!(u32::from(entry[8]), sluice_abi::SLUICE_PCT_F_ORIGIN_EGRESS | sluice_abi::SLUICE_PCT_F_PROXY, "flags after last_seen");
    ct.remove(&key).unwrap();
    assert_eq!(raw.keys().count(), 0, "the entry is removed");
    ct.remove(&key).unwrap();
}
