//! `sluice bench`: run a benchmark, print its table, write results.json and results.md.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

pub async fn control_plane(pods: usize, restarts: usize, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    let opts = sluice_bench::ControlPlaneOptions { pods, restarts, ..sluice_bench::ControlPlaneOptions::new(sluice) };
    eprintln!("control-plane benchmark: {pods} pods, {restarts} agent restarts per point");
    let result = sluice_bench::control_plane(&opts, &mut |line| eprintln!("  {line}")).await?;
    let markdown = result.markdown();
    println!("{markdown}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&result)?)?;
        std::fs::write(dir.join("results.md"), markdown)?;
        eprintln!("results written to {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
