//! The `loopscope` command: the demo server (`loopscope demo`) and, by default, the
//! whole demo in the foreground.

#[path = "../demo/mod.rs"]
mod demo;

use clap::{Parser, Subcommand};

/// A live profiler for event-loop concurrency: loop lag, thread-pool queues, per-worker CPU.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the instrumented demo server in the foreground.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(args)) => demo::run(args),
        None => {
            let cli = Cli::parse_from(["loopscope", "demo"]);
            match cli.command {
                Some(Command::Demo(args)) => demo::run(args),
                None => unreachable!("parsed with a subcommand"),
            }
        }
    }
}
