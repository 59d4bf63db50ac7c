//! `sluice-cni`: the CNI plugin of Sluice. The container runtime runs it once per operation with
//! CNI_* variables and a network configuration on stdin; it asks the node agent and answers on
//! stdout per the CNI specification 1.1.0 (also 1.0.0 and 0.4.0 configurations).
//!
//! `sluice-cni install` / `sluice-cni uninstall` (an argument, which a runtime never passes)
//! put the plugin and its network configuration in place on a node, or take them away.

mod config;
mod env;
mod error;
mod install;
#[cfg(test)]
mod never_panic;
mod result;
mod run;

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(command) = args.first() {
        return installer(command, &args[1..]);
    }
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run::execute(&|key| std::env::var(key).ok(), &stdin, &|socket| Box::new(run::SocketAgent::new(socket))),
        Err(e) => run::Reply { stdout: error::CniError::Stdin(e).to_json(config::CniVersion::CURRENT.as_str()), success: false },
    };
    let mut stdout = std::io::stdout().lock();
    let written = if reply.stdout.is_empty() { Ok(()) } else { writeln!(stdout, "{}", reply.stdout) };
    match (reply.success, written.and_then(|()| stdout.flush())) {
        (true, Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// `install` or `uninstall`, with their options; anything else is refused with the usage.
fn installer(command: &str, args: &[String]) -> ExitCode {
    let options = match install::parse_options(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("sluice-cni {command}: {e}");
            return ExitCode::from(2);
        }
    };
    let done = match command {
        "install" => std::env::current_exe()
            .map_err(|e| format!("finding this binary: {e}"))
            .and_then(|exe| install::install(&exe, &options))
            .map(|(bin, conf)| println!("installed {} and {}", bin.display(), conf.display())),
        "uninstall" => install::uninstall(&options).map(|removed| {
            for path in removed {
                println!("removed {}", path.display());
            }
        }),
        other => {
            eprintln!(
                "sluice-cni: unknown command {other:?}. A runtime runs the plugin without arguments (CNI_COMMAND in the environment); \
                 `sluice-cni install|uninstall [--bin-dir DIR] [--conf-dir DIR] [--agent-socket PATH] [--mtu N]` set a node up."
            );
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-cni {command}: {e}");
            ExitCode::FAILURE
        }
    }
}
