//! The `warmpool` binary: the server (`serve`), the image builder, and the API's command-line client.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the reconciler rebuilds its view of every instance each
/// pass, and under glibc that churn fragmented the heap — a pass at 10,000 VMs spent a third of
/// its time inside malloc, and memory freed after a burst of boots never went back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults keep memory the server no longer uses: its arena is committed eagerly and
/// freed pages go back to the system only after a delay. After a burst of boots the server held
/// three times what it used (2,000 `sim` VMs: 127 MiB resident, 42 MiB with these settings).
/// mimalloc reads them when the process's first allocation creates its arena — before `main` —
/// so the server starts itself once more with them in its environment, unless the user set them.
fn tune_allocator(args: &[String]) {
    const SETTINGS: [(&str, &str); 2] = [
        ("MIMALLOC_PURGE_DELAY", "0"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ];
    if args.get(1).map(String::as_str) != Some("serve")
        || SETTINGS.iter().any(|(k, _)| std::env::var_os(k).is_some())
    {
        return;
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(&args[0])
        .args(&args[1..])
        .envs(SETTINGS)
        .exec();
    // Not fatal: the server runs as well, only with more memory.
    eprintln!("warmpool: could not restart with the allocator's settings: {err}");
}

fn main() {
    // The sandbox's namespace holder is on every VM start's path: it only mounts, enters
    // namespaces and waits, so it skips everything else this program sets up.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__sandbox-hold")
    {
        warmpool_backend::sandbox::netns::hold_main();
    }
    let args: Vec<String> = std::env::args().collect();
    tune_allocator(&args);
    let cli = warmpool::cli::Cli::parse();
    if !matches!(cli.command, warmpool::cli::Command::Serve(_)) {
        // A client printing into `| head` should end quietly when the reader goes, like any
        // Unix tool. (The server keeps the default: a closed socket is an error, not a signal.)
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARMPOOL_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warmpool: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(warmpool::cli::run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("warmpool: {e:#}");
            std::process::exit(1);
        }
    }
}
