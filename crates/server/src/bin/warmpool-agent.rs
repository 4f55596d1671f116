//! The `warmpool-agent` binary: the server inside every VM (see the `warmpool-agent` crate).

fn main() {
    warmpool_agent::main()
}
