//! The command line: `warmpool serve`, `warmpool bench` and `warmpool image build` run here; every other command is a
//! client of a running server (`--url`, `--token`, defaulting to the local data dir's admin token).

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "warmpool",
    version,
    about = "Pools of ready VMs per project",
    propagate_version = true
)]
pub struct Cli {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "WARMPOOL_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// API token. Default: the admin token in the local data dir.
    #[arg(long, global = true, env = "WARMPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON answers as they are.
    #[arg(long, global = true)]
    pub json: bool,
    /// Trust this CA certificate (PEM) for an HTTPS server with a certificate of its own.
    #[arg(long, global = true, env = "WARMPOOL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Measure how fast this machine runs warmpool, each figure next to a baseline measured in
    /// the same run (starts servers and VMs of its own; the VM rows need root).
    Bench(crate::bench::BenchArgs),
    /// The VMs of a data dir, with no server running: list them, destroy them.
    #[command(subcommand)]
    Vms(VmsCmd),
    /// The guest image.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Environment variables (written to /home/.env in every VM).
    #[command(subcommand)]
    Env(EnvCmd),
    /// Devbox settings: project and per-repo setup commands.
    #[command(subcommand)]
    Devbox(DevboxCmd),
    /// Resource limits of a project's VMs: CPUs, memory, processes, disk.
    #[command(subcommand)]
    Resources(ResourcesCmd),
    /// The warm pool: configuration, test boots, status.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Claim a VM for a task: a ready one from the pool at once, else one booted for you.
    Claim {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// Your id for the task (kept with the instance).
        #[arg(long)]
        task_id: Option<String>,
        /// How long to wait for a VM booted for this claim.
        #[arg(long, default_value_t = 600)]
        wait_seconds: u32,
        /// The VM's lease in seconds: it is destroyed then unless renewed (default: the
        /// project's: `GET /v1/projects/{id}/leases`).
        #[arg(long)]
        ttl: Option<u32>,
        /// Print only the instance id.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Extend a claimed VM's lease, from now.
    Renew {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The instance's id (wpi_...).
        instance: String,
        /// Seconds from now (default: the project's default lease).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Project tokens: act on one project only.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Release a claimed VM (it is destroyed).
    Release {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The instance's id (wpi_...).
        instance: String,
    },
    /// Run a command in an instance (a ready test instance or a claimed one).
    Exec {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The instance's id (wpi_...).
        instance: String,
        /// Working directory in the VM (default /home).
        #[arg(long)]
        cwd: Option<String>,
        /// Timeout in seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// The command: one shell string, or a program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build the Debian guest image into the cache dir (needs root and debootstrap).
    Build {
        /// Where to build it (as `serve --cache-dir`). Default: $XDG_CACHE_HOME/warmpool or
        /// ~/.cache/warmpool.
        #[arg(long, env = "WARMPOOL_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Debian mirror the image is built from.
        #[arg(long, env = "WARMPOOL_DEBIAN_MIRROR", default_value = warmpool_backend::image::DEFAULT_MIRROR)]
        debian_mirror: String,
        /// The `warmpool-agent` binary to put in the image. Default: next to this executable.
        #[arg(long, env = "WARMPOOL_AGENT_BIN")]
        agent_bin: Option<PathBuf>,
        /// Also build what the qemu backend boots: the Debian cloud kernel, the initramfs and the
        /// ext4 base disk.
        #[arg(long)]
        qemu: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project from git repositories.
    Create {
        /// The project's name (1 to 200 characters).
        name: String,
        /// `owner/name=URL` or `owner/name=URL#branch`; URL may be a local path. Repeat for more.
        #[arg(long = "repo")]
        repos: Vec<String>,
        /// What the project is for (up to 2000 characters).
        #[arg(long)]
        description: Option<String>,
    },
    /// The projects this token may see (the first 100).
    List,
    /// A project: its name, task code, description and repositories.
    Show {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Destroy every VM of a project, then the project (admin token).
    Delete {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token for a project; its secret is printed once.
    Create {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// A project's tokens, without their secrets (admin token).
    List {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Revoke a token.
    Rm {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The token's id (tok_...), as `token list` shows it.
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Set variables: NAME=VALUE (a value may contain anything, `=` included).
    Set {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// NAME=VALUE, one or more; variables not named are kept.
        #[arg(required = true)]
        vars: Vec<String>,
    },
    /// The names of a project's variables (values are never shown).
    List {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Remove a variable.
    Rm {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The variable's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevboxCmd {
    /// The setup commands of the project and of each of its repos.
    Show {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Replace the project's setup commands (or, with --repo, one repo's).
    Set {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The repository whose `repo_setup` commands to set.
        #[arg(long)]
        repo: Option<String>,
        /// NAME=COMMAND, in order. None clears the list.
        #[arg(long = "cmd")]
        cmds: Vec<String>,
        /// Names of commands (given with --cmd) to start in the background.
        #[arg(long = "background")]
        background: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmsCmd {
    /// Every VM the data dir holds, running or not.
    List {
        /// The server's data dir (as `serve --data-dir`).
        #[arg(long, env = "WARMPOOL_DATA_DIR", default_value = "./warmpool-data")]
        data_dir: PathBuf,
    },
    /// Destroy VMs completely (processes, mounts, network, files). Refused while a server runs
    /// on the data dir.
    Rm {
        /// The server's data dir (as `serve --data-dir`).
        #[arg(long, env = "WARMPOOL_DATA_DIR", default_value = "./warmpool-data")]
        data_dir: PathBuf,
        /// Guest images and kernels (as `serve --cache-dir`).
        #[arg(long, env = "WARMPOOL_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Every VM of the data dir.
        #[arg(long)]
        all: bool,
        /// The VMs to destroy (`vm-...`, or `sp-...` for one started ahead of need).
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ResourcesCmd {
    /// What each VM of the project may use.
    Show {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Change the limits (only what is given) for the VMs booted from now on (admin token).
    Set {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// CPUs, 1 to 64.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory, MiB (128 to 262144).
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Processes and threads at once (64 to 4194304).
        #[arg(long)]
        pids_max: Option<u64>,
        /// What a VM may write to its disk, MiB (256 to 1048576).
        #[arg(long)]
        disk_mb: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Pool configuration and counts.
    Status {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// The pool in numbers: counts, staleness, degradation, claims, boot times.
    Stats {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Follow every boot of the pool live, until interrupted.
    Watch {
        /// The project: its id (proj_...) or its name.
        project: String,
    },
    /// Change the pool configuration (only what is given).
    Set {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// How many ready VMs the pool keeps, 1 to 20.
        #[arg(long)]
        size: Option<u32>,
        /// Minutes after which a ready VM is replaced, 30 to 180.
        #[arg(long)]
        max_age: Option<u32>,
        /// Clone every repo at this branch instead of its own.
        #[arg(long, conflicts_with = "no_branch")]
        branch: Option<String>,
        /// Use each repo's own branch again.
        #[arg(long)]
        no_branch: bool,
        /// Whether the pool keeps VMs ready (true or false).
        #[arg(long)]
        enabled: Option<bool>,
        /// NAME=COMMAND, in order; replaces the pool's setup commands.
        #[arg(long = "cmd")]
        cmds: Vec<String>,
        /// Names of commands (given with --cmd) to start in the background.
        #[arg(long = "background")]
        background: Vec<String>,
        /// Remove the pool's setup commands.
        #[arg(long, conflicts_with = "cmds")]
        no_cmds: bool,
    },
    /// Whether the pool sizes itself from the claims it sees (shown, or changed with the options
    /// given), and its effective target now.
    Autoscale {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// Turn autoscale on or off (true or false).
        #[arg(long)]
        enabled: Option<bool>,
        /// The fewest VMs kept, 0 to 20.
        #[arg(long)]
        min: Option<u32>,
        /// The most VMs kept, 1 to 20.
        #[arg(long)]
        max: Option<u32>,
    },
    /// Start a test boot.
    Test {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// Follow it: print each step as it finishes; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
        /// Save these setup commands first (NAME=COMMAND, in order).
        #[arg(long = "cmd")]
        cmds: Vec<String>,
        /// Names of commands (given with --cmd) to start in the background.
        #[arg(long = "background")]
        background: Vec<String>,
    },
    /// Destroy the pool's unclaimed instances (and disable it unless --replenish).
    Clear {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// Keep the pool enabled: it boots new VMs to replace those destroyed.
        #[arg(long)]
        replenish: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Instances, newest first.
    List {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// Only instances in this state: ready, provisioning, failed or claimed.
        #[arg(long)]
        status: Option<String>,
        /// How many, 1 to 50 (default 20).
        #[arg(long)]
        limit: Option<u32>,
        /// Print only the ids.
        #[arg(long, short)]
        quiet: bool,
    },
    /// An instance's summary and steps.
    Show {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The instance's id (wpi_...).
        instance: String,
        /// Print each step's output too.
        #[arg(long)]
        output: bool,
        /// First follow it until it is ready or failed.
        #[arg(long)]
        wait: bool,
    },
    /// Destroy an instance.
    Rm {
        /// The project: its id (proj_...) or its name.
        project: String,
        /// The instance's id (wpi_...).
        instance: String,
    },
}

pub use commands::run;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument and subcommand under `cmd` that has no help text, by its command path.
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            // clap's own --help and --version describe themselves.
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => format!("<{id}>"),
                };
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            without_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help() {
        let cmd = Cli::command();
        let mut missing = vec![];
        without_help(&cmd, cmd.get_name(), &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
