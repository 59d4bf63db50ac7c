//! Commands for Kubernetes clusters: `sluice crds` prints or writes the custom resource
//! definitions generated from Sluice's types.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sluice_kube::crds;

/// Prints every definition as one multi-document YAML stream, or writes one file per
/// definition into `out` (replacing each atomically, and removing `sluice.dev_*.yaml` files that
/// no definition generates any more, so the directory is exactly the output).
pub fn crds(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let definitions = crds::definitions()?;
    let Some(dir) = out else {
        let documents: Vec<String> = definitions.iter().map(crds::render).collect::<Result<_, _>>()?;
        print!("{}", documents.join("---\n"));
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for crd in &definitions {
        let name = crds::file_name(crd);
        let path = dir.join(&name);
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, crds::render(crd)?).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
        written.push(name);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("sluice.dev_") && name.ends_with(".yaml") && !written.contains(&name) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            eprintln!("removed {} (no definition generates it)", path.display());
        }
    }
    eprintln!("wrote {} definitions to {}", written.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}
