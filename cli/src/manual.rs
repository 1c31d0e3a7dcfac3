//! The man pages and shell completions, generated from the clap definition so
//! they never drift from `--help` (packaged by scripts/package.sh).
//!
//! The definition is passed in rather than read from the crate root, so this
//! module depends on nothing of the tool's.

use anyhow::Context;
use clap_complete::Shell;
use std::path::Path;

/// Writes `man/secretgate.1` (and one page per visible subcommand,
/// `secretgate-migrate.1`, …) and `completions/` for bash, zsh and fish into
/// `out`, all from `command`, the tool's whole clap definition.
pub fn write(command: clap::Command, out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    clap_mangen::generate_to(command.clone(), &man).context("cannot write the man pages")?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).with_context(|| format!("cannot create {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = command.clone();
        clap_complete::generate_to(shell, &mut command, "secretgate", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}
