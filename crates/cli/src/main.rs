//! `sluice`: run the node agent, inspect a node, and drive the local lab.

use std::time::Duration;

mod args;
mod bench_cmds;
mod kube_cmds;
mod lab_cmds;
mod node_cmds;
mod observe_cmds;
mod output;
mod policy_cmds;
mod probe_cmds;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print die quietly on a closed pipe (`sluice observe | head`), as Unix tools
    // do. The agent and the benchmarks must not: they hold sockets whose peers may hang up, and
    // a vectored write (which hyper and tonic use) to such a socket raises SIGPIPE; ignored, it
    // is the EPIPE error those connections already handle.
    let disposition = match cli.command {
        Command::Agent { .. } | Command::Proxy { .. } | Command::Bench { .. } => libc::SIG_IGN,
        _ => libc::SIG_DFL,
    };
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, disposition);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Crds { out } => return kube_cmds::crds(out.as_deref()),
        Command::SvcServer { name, ports } => return probe_cmds::server(name, ports),
        Command::SvcProbe { timeout, targets } => return probe_cmds::probe(targets, *timeout),
        Command::SvcClient { target, hold: true, timeout, .. } => return probe_cmds::hold(*target, Duration::from_millis(200), *timeout),
        Command::SvcClient { target, udp, timeout, .. } => return probe_cmds::client(*target, *udp, *timeout),
        _ => {}
    }
    if let Command::LabShim { status, argv } = &cli.command {
        // The shim must not start a runtime or logging: it only waits for its child.
        let code = sluice_lab::shim::run(status, argv);
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    // The proxy relays each request between two sockets: one thread keeps both ends' wake-ups
    // on one CPU instead of handing work across threads (measured in docs/benchmarks.md).
    let runtime = match &cli.command {
        Command::Proxy { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?,
    };
    let target = cli.target();
    runtime.block_on(async move {
        match cli.command {
            Command::Agent { config, node_name } => node_cmds::agent(&config, node_name.as_deref()).await,
            Command::Proxy { config, node_name } => node_cmds::proxy(&config, node_name.as_deref()).await,
            Command::Status { node, output } => node_cmds::status(&target, node.as_deref(), output).await,
            Command::Endpoint { command: args::EndpointCommand::List { node, output } } => {
                node_cmds::endpoint_list(&target, node.as_deref(), output).await
            }
            Command::Service { command: args::ServiceCommand::List { node, output } } => {
                node_cmds::service_list(&target, node.as_deref(), output).await
            }
            Command::Policy { command: args::PolicyCommand::Trace { from, to, port, proto, ipv6, output } } => {
                policy_cmds::trace(&cli.lab, &from, &to, port, &proto, ipv6, output).await
            }
            Command::Policy { command: args::PolicyCommand::Get { pod, output } } => policy_cmds::get(&cli.lab, &pod, output).await,
            Command::Observe(args) => observe_cmds::observe(&target, args).await,
            Command::Metrics { node } => observe_cmds::metrics(&target, node.as_deref()).await,
            Command::Up { nodes, host_routing, guard, monitor, service_cidrs, node_port_range, xdp, datastore, endpoints } => {
                lab_cmds::up(&cli.lab, nodes, host_routing, guard, monitor, &service_cidrs, &node_port_range, xdp, datastore, endpoints)
                    .await
            }
            Command::Preflight { node, all, output, local, config, pod_cidrs, devices } => {
                let local = local.then_some(node_cmds::LocalAudit { config, pod_cidrs, devices });
                node_cmds::preflight(&target, node.as_deref(), local, all, output).await
            }
            Command::Events { node, follow, output } => node_cmds::events(&target, node.as_deref(), follow, output).await,
            Command::Down => lab_cmds::down(&cli.lab).await,
            Command::RestartAgent { node } => lab_cmds::restart_agent(&cli.lab, &node).await,
            Command::RestartProxy { node } => lab_cmds::restart_proxy(&cli.lab, &node).await,
            Command::RestartEtcd => lab_cmds::restart_etcd(&cli.lab).await,
            Command::Apply { file, timeout } => lab_cmds::apply(&cli.lab, &file, timeout).await,
            Command::Get { resource, name, namespace, all_namespaces, output } => {
                lab_cmds::get(&cli.lab, &resource, name.as_deref(), &namespace, all_namespaces, output)
            }
            Command::Delete { file, resource, namespace } => lab_cmds::delete(&cli.lab, file.as_deref(), &resource, &namespace).await,
            Command::Exec { pod, external, namespace, argv } => {
                lab_cmds::exec(&cli.lab, pod.as_deref().filter(|_| !external), &namespace, &argv)
            }
            Command::Bench { bench, datapath } => bench_cmds::bench(bench, datapath).await,
            Command::LabShim { .. }
            | Command::Crds { .. }
            | Command::SvcServer { .. }
            | Command::SvcClient { .. }
            | Command::SvcProbe { .. } => Ok(ExitCode::SUCCESS),
        }
    })
}

/// "what failed: why: root cause".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
