#![warn(clippy::too_many_lines)]
use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use ambassador_user::{
    commands::{
        auth,
        cli::{Cli, Command},
        ctl, daemon, monitor,
        register::{self, RegisterConfig},
        socks,
    },
    datapath::loader,
    error::{Error, Result},
    services::status,
};
use clap::{CommandFactory as _, Parser as _};
use tracing_subscriber::EnvFilter;

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the runtime"))?
        .block_on(f)
}

/// For the roles that move bytes (`socks`): a worker per core.
fn block_on_threads<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the runtime"))?
        .block_on(f)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The error and each cause its own text does not already say.
fn with_causes(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

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
        Command::Run(args) => match (*args).into_config() {
            Ok(cfg) => block_on(daemon::run(cfg, std::future::pending())),
            Err(message) => {
                let mut cli = Cli::command();
                cli.build();
                cli.find_subcommand_mut("run")
                    .expect("run is a subcommand")
                    .error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit()
            }
        },
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
        Command::Uninstall(args) => loader::uninstall(&args.pin_path).map(|r| {
            if r.links.is_empty() && r.maps == 0 {
                println!("nothing installed at {}", args.pin_path.display());
            } else {
                println!(
                    "removed {} program links ({}) and {} maps; {} is gone",
                    r.links.len(),
                    r.links.join(", "),
                    r.maps,
                    args.pin_path.display()
                );
            }
        }),
        Command::Monitor(args) => monitor::run(args),
        Command::Service(cmd) => block_on(ctl::service(cmd)),
        Command::Endpoint(cmd) => block_on(ctl::endpoint(cmd)),
        Command::Vip(cmd) => block_on(ctl::vip(cmd)),
        Command::Env { services, etcd } => block_on(ctl::env(services, etcd)),
        Command::Auth(cmd) => block_on(auth::run(cmd)),
        Command::Register(a) => block_on(register::run(RegisterConfig {
            docker: a.docker,
            advertise_ip: a.advertise_ip,
            ttl: a.ttl,
            host_id: a.host_id.unwrap_or_else(hostname),
            address_mode: a.address_mode,
            reconcile_interval: Duration::from_secs(a.reconcile_interval),
            metrics_addr: a.metrics_addr,
            create_services: !a.no_create_services,
            etcd: a.etcd.into(),
        })),
        Command::Socks(args) => block_on_threads(socks::run(*args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambassador: {}", with_causes(&e));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
