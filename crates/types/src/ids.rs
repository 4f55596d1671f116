//! Identifiers: `proj_…` projects, `wpi_…` warm-pool instances, `vm-…` VMs (also the VM's hostname,
//! so only lower-case letters, digits and `-`), `tok_…` token ids.
//! An id that does not have our shape is answered with 404 before any lookup.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// 16 base-36 characters: about 82 bits, plenty against collisions and guessing.
const RANDOM_LEN: usize = 16;

fn random_part() -> String {
    let mut rng = rand::thread_rng();
    (0..RANDOM_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub const PROJECT_PREFIX: &str = "proj_";
pub const INSTANCE_PREFIX: &str = "wpi_";
pub const VM_PREFIX: &str = "vm-";
pub const TOKEN_PREFIX: &str = "tok_";

pub fn new_project_id() -> String {
    format!("{PROJECT_PREFIX}{}", random_part())
}
pub fn new_instance_id() -> String {
    format!("{INSTANCE_PREFIX}{}", random_part())
}
pub fn new_vm_id() -> String {
    format!("{VM_PREFIX}{}", random_part())
}
pub fn new_token_id() -> String {
    format!("{TOKEN_PREFIX}{}", random_part())
}

/// A random secret of `len` base-36 characters (tokens, capabilities).
pub fn random_secret(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn has_shape(id: &str, prefix: &str) -> bool {
    match id.strip_prefix(prefix) {
        Some(rest) => {
            rest.len() == RANDOM_LEN
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }
        None => false,
    }
}

pub fn is_project_id(id: &str) -> bool {
    has_shape(id, PROJECT_PREFIX)
}
pub fn is_instance_id(id: &str) -> bool {
    has_shape(id, INSTANCE_PREFIX)
}
pub fn is_vm_id(id: &str) -> bool {
    has_shape(id, VM_PREFIX)
}
pub fn is_token_id(id: &str) -> bool {
    has_shape(id, TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_shape() {
        assert!(is_project_id(&new_project_id()));
        assert!(is_instance_id(&new_instance_id()));
        let vm = new_vm_id();
        assert!(is_vm_id(&vm));
        assert!(
            vm.len() <= 63
                && vm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert!(!is_instance_id("wpi_../../etc"));
        assert!(!is_project_id("proj_123"));
    }
}
