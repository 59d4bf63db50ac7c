//! `sluice-cni`: the CNI plugin of Sluice. The container runtime runs it once per operation with
//! CNI_* variables and a network configuration on stdin; it asks the node agent and answers on
//! stdout per the CNI specification 1.1.0 (also 1.0.0 and 0.4.0 configurations).

mod config;
mod env;
mod error;
#[cfg(test)]
mod never_panic;
mod result;
mod run;

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
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
