//! A VM's disk limit (`diskMb`), where the host's filesystem can keep one: when the data dir is on
//! btrfs with quotas enabled (`btrfs quota enable <mount>`), each VM's writable layer (the
//! overlay's upper and work dirs) is a subvolume of its own with a qgroup limit, so a VM that writes past it gets "Disk quota
//! exceeded" and nothing else is touched. Elsewhere the layer is a plain directory and nothing
//! is enforced. (btrfs qgroups need no quota support in the kernel build, which ext4 and XFS
//! project quotas do.)

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upper {
    /// A btrfs subvolume with its limit set.
    Limited,
    /// A plain directory: the filesystem keeps no limit (not btrfs, or quotas off).
    Unlimited,
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

/// Makes `dir/name`, limited to `limit_mb` MiB of data where the filesystem allows it.
pub fn make_upper(dir: &Path, name: &str, limit_mb: u64) -> std::io::Result<Upper> {
    let target = dir.join(name);
    if !is_btrfs(dir) {
        std::fs::create_dir(&target)?;
        return Ok(Upper::Unlimited);
    }
    let parent = std::fs::File::open(dir)?;
    let args = vol_args(name)?;
    // SAFETY: the argument is a properly laid out btrfs_ioctl_vol_args.
    unsafe { subvol_create(parent.as_raw_fd(), &args) }.map_err(std::io::Error::from)?;
    set_limit(&target, limit_mb)
}

/// Sets the limit of a writable layer made by [`make_upper`] to `limit_mb` MiB (a plain
/// directory keeps none).
pub fn set_limit(target: &Path, limit_mb: u64) -> std::io::Result<Upper> {
    let is_subvol = std::fs::symlink_metadata(target)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == SUBVOL_ROOT_INO)
        .unwrap_or(false);
    if !is_subvol || !is_btrfs(target) {
        return Ok(Upper::Unlimited);
    }
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
        Ok(_) => Ok(Upper::Limited),
        // Quotas are off on this filesystem: the operator has not asked for them.
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EINVAL) => Ok(Upper::Unlimited),
        Err(e) => Err(e.into()),
    }
}

/// Removes `dir/name` if it is a subvolume (with its qgroup), whatever it holds; a plain
/// directory is left to the caller.
pub fn remove_upper(dir: &Path, name: &str) {
    let target = dir.join(name);
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
