//! What a QEMU guest boots: the Debian cloud kernel (from its Debian package), a small initramfs
//! (busybox, the virtio modules, this server's agent build, and an init that mounts the root disk,
//! installs the agent, configures the network and hands over to `warmpool-agent --init`), and the
//! guest rootfs as an ext4 base disk that every VM overlays copy-on-write. Built once into the cache
//! dir; only the small initramfs changes with the agent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::image::find_program;

/// The Debian meta package that names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Modules the guest needs before it can see its disk and network, in load order (dependencies
/// are added from `modules.dep`).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio-rng"];
/// Where the agent listens inside the guest.
pub const AGENT_PORT: u16 = warmpool_types::agent::AGENT_GUEST_PORT;
/// Size of the guest's root filesystem (sparse: only what is written takes space).
const DISK_SIZE: &str = "8G";

#[derive(Debug, Clone)]
pub struct GuestFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub base_disk: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn need(program: &str, package: &str) -> Result<PathBuf, String> {
    find_program(program).ok_or_else(|| {
        format!("{program} is not installed; install it with `apt-get install -y {package}` (the qemu backend needs it)")
    })
}

/// The init of the initramfs. Parameters come from the kernel command line.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
HN=warmpool
for x in $(cat /proc/cmdline); do
  case "$x" in warmpool.hostname=*) HN="${x#*=}";; esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "warmpool-init: cannot mount the root disk /dev/vda"; poweroff -f
fi
ip link set lo up
# Two NICs, told apart by their MACs (see `net.rs`): `local` reaches only what the host forwards
# (10.0.2.0/24), `out` (passt) carries everything else.
for n in /sys/class/net/*; do
  case "$(cat "$n/address")" in
    52:54:00:12:34:56) LOCAL_IF="${n##*/}";;
    52:54:00:12:34:57) OUT_IF="${n##*/}";;
  esac
done
ip addr add 10.0.2.15/24 dev "$LOCAL_IF" && ip link set "$LOCAL_IF" up
ip link set "$OUT_IF" mtu 65520
ip addr add 10.0.3.15/24 dev "$OUT_IF" && ip link set "$OUT_IF" up && ip route add default via 10.0.3.2 dev "$OUT_IF"
hostname "$HN"
echo "$HN" > /newroot/etc/hostname
rm -f /newroot/etc/resolv.conf; echo "nameserver 10.0.3.3" > /newroot/etc/resolv.conf
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$HN" > /newroot/etc/hosts
mkdir -p /newroot/usr/local/bin
cp /warmpool-agent /newroot/usr/local/bin/warmpool-agent
for d in proc sys dev tmp run; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
umount /proc /sys /dev
exec switch_root /newroot /usr/local/bin/warmpool-agent --init --listen 0.0.0.0:7071 --token-cmdline
"#;

/// The kernel package dir in the cache: reuses one already there, else downloads the current one.
fn kernel_dir(cache: &Path) -> Result<PathBuf, String> {
    let kernels = cache.join("kernels");
    if let Ok(rd) = std::fs::read_dir(&kernels) {
        let mut found: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("vmlinuz").is_file() && p.join("ready").is_file())
            .collect();
        found.sort();
        if let Some(k) = found.pop() {
            return Ok(k);
        }
    }
    need("apt-get", "apt")?;
    need("dpkg-deb", "dpkg")?;
    let depmod = need("depmod", "kmod")?;
    let deps = run(
        Command::new("apt-cache").args(["depends", KERNEL_META]),
        "apt-cache depends",
    )?;
    let package = String::from_utf8_lossy(&deps)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_string))
        .filter(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| format!("apt knows no kernel for {KERNEL_META} (run `apt-get update`?)"))?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let tmp = kernels.join(format!(".{package}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    run(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&tmp),
        "apt-get download",
    )?;
    let deb = std::fs::read_dir(&tmp)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download produced no .deb")?;
    let root = tmp.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    )?;
    // The package ships no modules.dep.
    run(
        Command::new(depmod).arg("-b").arg(&root).arg(&version),
        "depmod",
    )?;
    std::fs::rename(
        root.join(format!("boot/vmlinuz-{version}")),
        tmp.join("vmlinuz"),
    )
    .map_err(|e| format!("the kernel package has no vmlinuz: {e}"))?;
    std::fs::rename(root.join("lib/modules").join(&version), tmp.join("modules"))
        .map_err(|e| format!("the kernel package has no modules: {e}"))?;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&deb);
    std::fs::write(tmp.join("version"), &version).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join("ready"), "").map_err(|e| e.to_string())?;
    let dest = kernels.join(&package);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| format!("cannot move the kernel into place: {e}"))?;
    Ok(dest)
}

/// Module files to load, dependencies first, from `modules.dep`.
fn module_order(modules: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .map_err(|e| format!("cannot read modules.dep: {e}"))?;
    let table: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let name = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".ko").to_string())
            .unwrap_or_default()
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(
        m: &str,
        table: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|x| x == m) {
            return;
        }
        for d in table.get(m).into_iter().flatten() {
            visit(d, table, order);
        }
        order.push(m.to_string());
    }
    for want in MODULES {
        if let Some(path) = table.keys().find(|p| name(p) == *want) {
            visit(path, &table, &mut order);
        }
    }
    Ok(order
        .into_iter()
        .map(|p| (name(&p), modules.join(p)))
        .collect())
}

/// Writes a `newc` initramfs with `cpio`, uncompressed (the kernel reads it directly).
fn build_initrd(kernel: &Path, agent_bin: &Path, dest: &Path) -> Result<(), String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed; install it with `apt-get install -y busybox-static`")?;
    let cpio = need("cpio", "cpio")?;
    let staging = dest.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "newroot"] {
        std::fs::create_dir_all(staging.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, staging.join("bin/busybox"))
        .map_err(|e| format!("cannot copy busybox: {e}"))?;
    let order = module_order(&kernel.join("modules"))?;
    if order.len() < 3 {
        return Err("the kernel's modules.dep lacks the virtio modules".into());
    }
    let mut names = String::new();
    for (name, path) in &order {
        std::fs::copy(path, staging.join("lib/modules").join(format!("{name}.ko")))
            .map_err(|e| format!("cannot copy module {name}: {e}"))?;
        names.push_str(name);
        names.push('\n');
    }
    std::fs::write(staging.join("modules.order"), names).map_err(|e| e.to_string())?;
    std::fs::write(staging.join("init"), INIT).map_err(|e| e.to_string())?;
    std::fs::copy(agent_bin, staging.join("warmpool-agent"))
        .map_err(|e| format!("cannot copy the agent: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    for f in ["init", "bin/busybox", "warmpool-agent"] {
        std::fs::set_permissions(staging.join(f), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let mut files = Vec::new();
    for entry in walk(&staging)? {
        let rel = entry.strip_prefix(&staging).map_err(|e| e.to_string())?;
        if !rel.as_os_str().is_empty() {
            files.push(rel.to_path_buf());
        }
    }
    let tmp = dest.with_extension("tmp");
    let out = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    let mut child = Command::new(cpio)
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cpio: {e}"))?;
    {
        let mut stdin = child.stdin.take().ok_or("cpio stdin")?;
        for f in &files {
            writeln!(stdin, "{}", f.display()).map_err(|e| e.to_string())?;
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("cpio failed ({status})"));
    }
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::rename(&tmp, dest).map_err(|e| e.to_string())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).map_err(|e| e.to_string())?.flatten() {
                out.push(e.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The ext4 base disk of a rootfs.
fn build_base_disk(rootfs: &Path, dest: &Path) -> Result<(), String> {
    let mkfs = need("mkfs.ext4", "e2fsprogs")?;
    let staging = dest.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    run(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(rootfs)
            .arg(&staging),
        "copying the rootfs",
    )?;
    // passt forwards DNS sent to this address to the host's resolver (the init writes it again at
    // every boot: disks built before kept another address).
    let _ = std::fs::remove_file(staging.join("etc/resolv.conf"));
    std::fs::write(
        staging.join("etc/resolv.conf"),
        format!("nameserver {}\n", super::net::OUT_DNS),
    )
    .map_err(|e| e.to_string())?;
    for d in ["home", "var/log/warmpool", "usr/local/bin"] {
        std::fs::create_dir_all(staging.join(d)).map_err(|e| e.to_string())?;
    }
    let tmp = dest.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let res = run(
        Command::new(mkfs)
            .args(["-q", "-F", "-L", "warmpool", "-d"])
            .arg(&staging)
            .arg(&tmp)
            .arg(DISK_SIZE),
        "mkfs.ext4",
    );
    let _ = std::fs::remove_dir_all(&staging);
    res?;
    std::fs::rename(&tmp, dest).map_err(|e| e.to_string())
}

/// Everything a guest boots from, built into `cache` if missing. Blocking.
pub fn ensure(cache: &Path, rootfs: &Path, agent_bin: &Path) -> Result<GuestFiles, String> {
    let dir = cache.join("qemu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".build.lock")).map_err(|e| e.to_string())?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock the guest build: {e}"))?;
    let kernel = kernel_dir(cache)?;
    let agent = std::fs::read(agent_bin).map_err(|e| format!("cannot read the agent: {e}"))?;
    let mut h = Sha256::new();
    h.update(INIT);
    h.update(&agent);
    let initrd = kernel.join(format!("initrd-{}.cpio", &hex::encode(h.finalize())[..16]));
    if !initrd.is_file() {
        build_initrd(&kernel, agent_bin, &initrd)?;
    }
    let key = hex::encode(Sha256::digest(rootfs.as_os_str().as_encoded_bytes()));
    let base_disk = dir.join(format!("base-{}.img", &key[..16]));
    if !base_disk.is_file() {
        tracing::info!("building the qemu guest disk {}", base_disk.display());
        build_base_disk(rootfs, &base_disk)?;
    }
    Ok(GuestFiles {
        kernel: kernel.join("vmlinuz"),
        initrd,
        base_disk,
    })
}

#[cfg(test)]
mod tests {
    use super::super::net;
    use super::INIT;

    #[test]
    fn the_init_configures_the_network_layout_of_net_rs() {
        for want in [
            format!("{}) LOCAL_IF", net::LOCAL_MAC),
            format!("{}) OUT_IF", net::OUT_MAC),
            format!("{}/24 dev \"$OUT_IF\"", net::OUT_ADDR),
            format!("default via {} dev \"$OUT_IF\"", net::OUT_GATEWAY),
            format!("nameserver {}", net::OUT_DNS),
        ] {
            assert!(INIT.contains(&want), "the init lacks `{want}`");
        }
        let mirror = net::MIRROR_ADDR.rsplit_once('.').unwrap().0;
        assert!(INIT.contains(&format!("ip addr add {mirror}.15/24 dev \"$LOCAL_IF\"")));
    }
}
