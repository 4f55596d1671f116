//! What a boot needs of the server's git side: a repository's branch head, held still while the
//! VM fetches it, and a URL the VM may fetch it from.

use std::time::Instant;

use async_trait::async_trait;

use crate::git::source::RepoSource;

/// A branch's head, ready to be fetched by a VM.
pub struct RepoHead {
    pub branch: String,
    pub commit: String,
    /// Where the VM fetches it from (the server's mirror, with a grant of its own).
    pub url: String,
    /// Keeps the mirror still and the grant valid until dropped.
    pub hold: Box<dyn Send + Sync>,
}

#[async_trait]
pub trait RepoAccess: Send + Sync {
    /// Brings the server's mirror of `src` up to date — a fetch begun after `since` will do —
    /// and finds the branch to use — `branch`, else the remote's default — and its head.
    /// Progress goes to `log`; errors are one line a person can act on.
    async fn head(
        &self,
        src: &RepoSource,
        branch: Option<&str>,
        since: Instant,
        log: &mut (dyn for<'l> FnMut(&'l str) + Send),
    ) -> Result<RepoHead, String>;

    /// Starts bringing the mirror of `src` up to date in the background, so that a `head` asked
    /// a little later (with a `since` before now) finds it done: a boot starts it with its VM.
    fn prefetch(&self, src: &RepoSource) {
        let _ = src;
    }
}
