use std::{io::IsTerminal as _, process::ExitCode};

use ambassador_user::{
    cli::{Cli, Command},
    daemon, status,
};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("ambassador: --log {:?}: {e}", cli.log);
        std::process::exit(64)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ambassador_user::error::Error::io("starting the runtime"))
            .and_then(|rt| rt.block_on(daemon::run(args.into(), std::future::pending()))),
        Command::Status(args) => status::read(&args.pin_path).map(|s| {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status serializes")
                );
            } else {
                print!("{}", status::render(&s));
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambassador: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
