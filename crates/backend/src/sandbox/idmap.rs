//! Host ids of sandbox VMs. A VM's root is host id `base`, its user 1000 is `base + 1000`, and so
//! on: the image layers a VM starts from must be owned by that range too, so each layer is
//! copied once into a copy whose owners are shifted by `base` (runc 1.1 has no idmapped mounts).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spec::IdRange;

/// The default range: far above the ranges `/etc/subuid` hands to users (100000 and up, in steps
/// of 65536), so no user of the host can become a VM's root through a range of their own.
pub const DEFAULT_RANGE: IdRange = IdRange {
    base: 1_000_000_000,
    size: 65536,
};

/// Ranges of `/etc/subuid`-style files that overlap `r`, as `file: line`.
pub fn overlaps(r: IdRange, files: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines() {
            let parts: Vec<&str> = line.trim().split(':').collect();
            if parts.len() != 3 {
                continue;
            }
            let (Ok(start), Ok(count)) = (parts[1].parse::<u64>(), parts[2].parse::<u64>()) else {
                continue;
            };
            let (a0, a1) = (start, start + count);
            // Two below the range too: pasta's sockets carry the group just below it (see
            // `egress_gid`), the qemu backend's passt runs as the id below that (`qemu::net`).
            let (b0, b1) = (r.base as u64 - 2, r.base as u64 + r.size as u64);
            if a0 < b1 && b0 < a1 {
                out.push(format!("{}: {line}", f.display()));
            }
        }
    }
    out
}

/// Shifts the owners of everything under `dir` (itself included) into `r`. Ids already in the
/// range are left alone, so a copy interrupted half-way can be shifted again.
pub fn shift_tree(dir: &Path, r: IdRange) -> std::io::Result<()> {
    fn shift(p: &Path, r: IdRange) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        let map = |id: u32| {
            if id < r.size {
                Some(id + r.base)
            } else {
                None
            }
        };
        let (uid, gid) = (map(md.uid()), map(md.gid()));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(p, uid, gid)?;
            // chown clears setuid and setgid bits: a VM's sudo must keep them.
            if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
            }
        }
        if md.is_dir() {
            for entry in std::fs::read_dir(p)? {
                shift(&entry?.path(), r)?;
            }
        }
        Ok(())
    }
    shift(dir, r)
}

/// `dest`, made once as a copy of `src` owned by the range `r` (copied to a temporary name and
/// renamed, so a half-made copy is never used).
pub fn shifted_copy(src: &Path, dest: &Path, r: IdRange) -> Result<PathBuf, String> {
    if dest.join(".warmpool-shifted").is_file() {
        return Ok(dest.to_path_buf());
    }
    let parent = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent", dest.display()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // A name of this call's own: a start that was given up on (its caller cancelled) may still
    // be copying in the background while the next one starts.
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("layer"),
        std::process::id(),
        crate::random_hex(4)
    ));
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
        .arg(src)
        .arg(&tmp)
        .status()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "cannot copy {} for the VMs' id range ({status})",
            src.display()
        ));
    }
    shift_tree(&tmp, r)
        .map_err(|e| format!("cannot shift the owners of {}: {e}", tmp.display()))?;
    std::fs::write(
        tmp.join(".warmpool-shifted"),
        format!("{} {}\n", r.base, r.size),
    )
    .map_err(|e| format!("cannot mark {}: {e}", tmp.display()))?;
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        // Another server made it first: theirs is the same.
        Err(_) if dest.join(".warmpool-shifted").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dest.to_path_buf())
        }
        Err(e) => Err(format!("cannot install {}: {e}", dest.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_subordinate_ranges_are_found() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("subuid");
        std::fs::write(
            &f,
            "alice:100000:65536\nbob:999990000:20000\nbroken line\ncarol:1000065536:10\n",
        )
        .unwrap();
        let found = overlaps(DEFAULT_RANGE, &[&f, Path::new("/nonexistent/subgid")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("bob"));
    }

    #[test]
    fn shifting_is_idempotent_and_keeps_setuid_bits() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: shifting owners needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sudo");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("sudo", d.path().join("link")).unwrap();
        let r = IdRange {
            base: 1_000_000_000,
            size: 65536,
        };
        shift_tree(d.path(), r).unwrap();
        shift_tree(d.path(), r).unwrap();
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!(md.uid(), 1_000_000_000);
        assert_eq!(md.mode() & 0o7777, 0o4755);
        let link = std::fs::symlink_metadata(d.path().join("link")).unwrap();
        assert_eq!(link.uid(), 1_000_000_000);
    }
}
