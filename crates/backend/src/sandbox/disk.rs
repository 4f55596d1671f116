//! A VM's disk limit (`diskMb`): what its writable layer (the overlay's upper and work dirs, in
//! `<vm-dir>/rw`) may hold.
//!
//! - When the data dir is on btrfs with quotas enabled (`btrfs quota enable <mount>`), `rw` is a
//!   subvolume of its own with a qgroup limit: a VM that writes past it gets "Disk quota
//!   exceeded".
//! - Elsewhere `rw` is an ext4 filesystem of its own, in a sparse image file (`rw.img`, which
//!   takes only the host space the VM uses) on a loop device: a VM that writes past it gets "No
//!   space left on device". ext4 and XFS project quotas would need quota support built into the
//!   kernel, and a mount option, which hosts often lack; a loop device needs neither.
//! - Where neither can be made (no loop devices, say in a container), `rw` is a plain directory
//!   and nothing is enforced.
//!
//! Either way nothing outside the VM is touched when it fills its disk.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = 256;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);
nix::ioctl_readwrite!(ino_lookup, 0x94, 18, InoLookupArgs);
nix::ioctl_write_ptr!(qgroup_create, 0x94, 42, QgroupCreateArgs);
nix::ioctl_read!(qgroup_limit, 0x94, 43, QgroupLimitArgs);

/// How a VM's writable layer was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// A btrfs subvolume with its limit set (a later limit may be anything).
    Subvolume,
    /// An ext4 filesystem of `size_mb` MiB of its own: its limit for good.
    Image { size_mb: u64 },
    /// A plain directory, no limit kept, for this reason.
    Unlimited(String),
}

impl Upper {
    /// The one limit [`set_limit`] can give it later (`None`: any).
    pub fn fixed_mb(&self) -> Option<u64> {
        match self {
            Upper::Image { size_mb } => Some(*size_mb),
            _ => None,
        }
    }
}

/// `<linux/loop.h>`: `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `<linux/loop.h>`: `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The loop device goes away by itself once its filesystem is unmounted.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);

/// Where a writable layer's image file is kept, next to it.
fn image_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.img"))
}

/// Attaches `image` to a free loop device, detached again at its last close or unmount;
/// answers its path and an open descriptor of it.
fn attach_loop(image: &Path) -> Result<(PathBuf, std::fs::File), ImageError> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ImageError::Unavailable(format!("no loop devices here (/dev/loop-control: {e})"))
            }
            _ => ImageError::Failed(e),
        })?;
    // Another process may take the free device first: then ask again.
    for _ in 0..16 {
        // SAFETY: an ioctl without argument on a descriptor this function owns.
        let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| ImageError::Failed(e.into()))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loop_fd = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: a properly laid out loop_config, alive for the call.
        match unsafe { loop_configure(loop_fd.as_raw_fd(), &config) } {
            Ok(_) => return Ok((dev, loop_fd)),
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(nix::errno::Errno::EINVAL) => {
                return Err(ImageError::Unavailable(
                    "the kernel cannot configure loop devices in one call (Linux 5.8 or later)"
                        .into(),
                ))
            }
            Err(e) => return Err(ImageError::Failed(e.into())),
        }
    }
    Err(ImageError::Failed(std::io::Error::other(
        "no free loop device",
    )))
}

/// Why an image could not be made.
enum ImageError {
    /// This host cannot make one at all (no loop devices, no `mkfs.ext4`, a kernel before 5.8).
    Unavailable(String),
    /// It could, but this one failed.
    Failed(std::io::Error),
}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Failed(e)
    }
}

/// Makes `dir/name` an ext4 filesystem of `size_mb` MiB in a sparse image of its own.
fn make_image(dir: &Path, name: &str, size_mb: u64) -> Result<(), ImageError> {
    let image = image_path(dir, name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&image)?;
    f.set_len(size_mb.saturating_mul(1 << 20))?;
    drop(f);
    // No journal: the layer does not outlive the host's uptime anyway. Inode tables are left
    // for the kernel to treat as empty (`noinit_itable` below), and no blocks are reserved for
    // growing the filesystem (`^resize_inode`: an image never grows), so mkfs writes about
    // 230 KiB instead of 4.3 MiB. That matters beyond the image: the host filesystem's next
    // journal commit must flush what mkfs wrote, and the store's durable commits waited 10 ms
    // for it while a burst of VMs started.
    // By its full name: a program looked up in a PATH the child is given makes the standard
    // library fork the whole server instead of spawning (see `crate::spawn`).
    let mkfs = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join("mkfs.ext4"))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Unavailable("mkfs.ext4 is not installed (e2fsprogs)".into()))?;
    let out = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-O", "^has_journal,^resize_inode", "-m", "0"])
        .args(["-E", "lazy_itable_init=1,nodiscard"])
        .arg(&image)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ImageError::Unavailable("mkfs.ext4 is not installed (e2fsprogs)".into())
            }
            _ => ImageError::Failed(e),
        })?;
    if !out.status.success() {
        return Err(ImageError::Failed(std::io::Error::other(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    }
    let target = dir.join(name);
    std::fs::create_dir(&target)?;
    // Held open until mounted: a device set to clear itself does so at its last close.
    let (dev, _held) = attach_loop(&image)?;
    let mounted = nix::mount::mount(
        Some(&dev),
        &target,
        Some("ext4"),
        nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOATIME,
        // `discard`: space the VM frees goes back to the host (holes punched in the image).
        Some("noinit_itable,discard"),
    );
    // Unmounted, the device detaches itself when `_held` closes.
    mounted.map_err(|e| ImageError::Failed(e.into()))?;
    // Only root on the host may look at the filesystem's own root (its lost+found, the
    // reserved space).
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

// `f_type`'s width differs between architectures (i64 on x86_64).
#[allow(clippy::unnecessary_cast)]
fn is_btrfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
}

fn vol_args(name: &str) -> std::io::Result<VolArgs> {
    let bytes = CString::new(name)?.into_bytes_with_nul();
    let mut a = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    if bytes.len() > a.name.len() {
        return Err(std::io::Error::other("name too long"));
    }
    a.name[..bytes.len()].copy_from_slice(&bytes);
    Ok(a)
}

/// Makes `dir/name`, limited to `limit_mb` MiB of data where the host allows it (see the module).
pub fn make_upper(dir: &Path, name: &str, limit_mb: u64) -> std::io::Result<Upper> {
    let target = dir.join(name);
    if is_btrfs(dir) {
        let parent = std::fs::File::open(dir)?;
        let args = vol_args(name)?;
        // SAFETY: the argument is a properly laid out btrfs_ioctl_vol_args.
        unsafe { subvol_create(parent.as_raw_fd(), &args) }.map_err(std::io::Error::from)?;
        if set_qgroup_limit(&target, limit_mb)? {
            return Ok(Upper::Subvolume);
        }
        // Quotas are off on this filesystem: an image of its own instead.
        remove_upper(dir, name);
    }
    match make_image(dir, name, limit_mb) {
        Ok(()) => Ok(Upper::Image { size_mb: limit_mb }),
        // A host that cannot make one at all keeps no limit (and the log says so); a host that
        // can never lets a VM go without one.
        Err(ImageError::Unavailable(why)) => {
            remove_upper(dir, name);
            let _ = std::fs::remove_dir(&target);
            std::fs::create_dir(&target)?;
            Ok(Upper::Unlimited(why))
        }
        Err(ImageError::Failed(e)) => {
            remove_upper(dir, name);
            Err(std::io::Error::new(
                e.kind(),
                format!("cannot make the VM's disk: {e}"),
            ))
        }
    }
}

/// Sets the limit of the writable layer `dir/name` made by [`make_upper`] to `limit_mb` MiB: a
/// subvolume's qgroup; an image keeps the size it was made with (a VM would see the size of a
/// larger one in `df`, and so learn another VM's limit), which must be that.
pub fn set_limit(dir: &Path, name: &str, limit_mb: u64) -> std::io::Result<()> {
    if let Ok(md) = std::fs::metadata(image_path(dir, name)) {
        let size_mb = md.len() >> 20;
        if limit_mb != size_mb {
            return Err(std::io::Error::other(format!(
                "its disk holds {size_mb} MiB, not {limit_mb}"
            )));
        }
        return Ok(());
    }
    let target = dir.join(name);
    let is_subvol = std::fs::symlink_metadata(&target)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == SUBVOL_ROOT_INO)
        .unwrap_or(false);
    if is_subvol && is_btrfs(&target) {
        set_qgroup_limit(&target, limit_mb)?;
    }
    Ok(())
}

/// Sets a subvolume's qgroup limit; false when quotas are off on its filesystem.
fn set_qgroup_limit(target: &Path, limit_mb: u64) -> std::io::Result<bool> {
    let sub = std::fs::File::open(target)?;
    let mut lim = QgroupLimitArgs {
        // 0: the subvolume's own qgroup.
        qgroupid: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: limit_mb.saturating_mul(1 << 20),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: a properly laid out btrfs_ioctl_qgroup_limit_args.
    match unsafe { qgroup_limit(sub.as_raw_fd(), &mut lim) } {
        Ok(_) => Ok(true),
        // Quotas are off on this filesystem: the operator has not asked for them.
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes `dir/name` if it is a filesystem of its own (unmounted, its loop device detached, its
/// image deleted) or a subvolume (with its qgroup), whatever it holds; a plain directory is left
/// to the caller.
pub fn remove_upper(dir: &Path, name: &str) {
    let target = dir.join(name);
    let image = image_path(dir, name);
    if image.exists() {
        // Lazily: the VM's overlay over it may still be going away.
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&target);
        let _ = std::fs::remove_file(&image);
        return;
    }
    let is_subvol = std::fs::symlink_metadata(&target)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == SUBVOL_ROOT_INO)
        .unwrap_or(false);
    if !is_subvol || !is_btrfs(&target) {
        return;
    }
    let id = std::fs::File::open(&target).ok().and_then(|f| {
        let mut a = InoLookupArgs {
            treeid: 0,
            objectid: SUBVOL_ROOT_INO,
            name: [0; 4080],
        };
        // SAFETY: a properly laid out btrfs_ioctl_ino_lookup_args.
        unsafe { ino_lookup(f.as_raw_fd(), &mut a) }
            .ok()
            .map(|_| a.treeid)
    });
    let Ok(parent) = std::fs::File::open(dir) else {
        return;
    };
    let Ok(args) = vol_args(name) else {
        return;
    };
    // SAFETY: as in make_upper.
    if unsafe { snap_destroy(parent.as_raw_fd(), &args) }.is_err() {
        return;
    }
    if let Some(id) = id {
        let q = QgroupCreateArgs {
            create: 0,
            qgroupid: id,
        };
        // SAFETY: a properly laid out btrfs_ioctl_qgroup_create_args. A qgroup left behind
        // (quotas off, or still referenced) is only bookkeeping.
        let _ = unsafe { qgroup_create(parent.as_raw_fd(), &q) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a filesystem without quotas (not btrfs), the layer is an ext4 filesystem of its own
    /// whose size is its limit; removing it leaves nothing. Needs root (loop devices).
    #[test]
    fn an_image_layer_holds_its_limit_and_goes_away() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (loop devices, mounts)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let upper = make_upper(dir.path(), "rw", 300).unwrap();
        assert_eq!(upper, Upper::Image { size_mb: 300 });
        let rw = dir.path().join("rw");
        let free_mb = |p: &Path| {
            let s = nix::sys::statvfs::statvfs(p).unwrap();
            (s.blocks_available() as u64 * s.fragment_size() as u64) >> 20
        };
        assert!((250..=300).contains(&free_mb(&rw)), "{}", free_mb(&rw));
        // Its size is its limit for good.
        set_limit(dir.path(), "rw", 300).unwrap();
        assert!(set_limit(dir.path(), "rw", 100).is_err());
        assert!(set_limit(dir.path(), "rw", 400).is_err());
        remove_upper(dir.path(), "rw");
        assert!(!rw.exists() && !image_path(dir.path(), "rw").exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*dir.path().to_string_lossy()));
    }
}
