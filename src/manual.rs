//! What the command line says about itself, for shells and `man`: `agentq completions SHELL`
//! (a script made by `clap_complete`) and `agentq man [--dir DIR]` (pages made by `clap_mangen`).
//!
//! Both are drawn from the clap definition in [`crate::cli`], so they cannot fall behind it. They
//! need no agentq.toml, no daemon and no store: they work anywhere, e.g. in a package's build.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

/// The name the scripts complete and the pages are named after, whatever the binary's file is
/// called (`agentq.exe`, a symlink).
const BIN: &str = "agentq";

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible(&Cli::command()), BIN, &mut script);
    print_bytes(&script)
}

/// `cmd` without its hidden subcommands (the daemon's own `guard`, `service run`), at every
/// level: clap_complete's scripts would offer them (it leaves out hidden arguments, not hidden
/// commands). Made anew, as clap can add subcommands but not remove them: the name, texts,
/// aliases, arguments and groups are what a completion script reads. (clap takes names as
/// `&'static str`: the few dozen bytes of names are leaked, once, by a command that prints and
/// exits.)
fn visible(cmd: &clap::Command) -> clap::Command {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let mut out = clap::Command::new(leak(cmd.get_name()))
        .args(cmd.get_arguments().cloned())
        .groups(cmd.get_groups().cloned())
        .visible_aliases(cmd.get_visible_aliases().map(leak).collect::<Vec<_>>());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(leak(version));
    }
    out.subcommands(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(visible),
    )
}

/// Prints agentq(1), or with `dir`, writes it and a page per command into `dir` and prints the
/// path of each file written, one a line.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let Some(dir) = dir else {
        return print_bytes(&page(clap_mangen::Man::new(command())));
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the man page folder", dir, e))?;
    let mut written = Vec::new();
    write_pages(command(), dir, &mut written)?;
    let mut list = String::new();
    for path in written {
        list.push_str(&format!("{}\n", path.display()));
    }
    print_bytes(list.as_bytes())
}

/// The command line as the pages describe it: built, so that each command knows its full name
/// (`agentq-worker-restart`), and without clap's `help` command, which needs no page.
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `cmd`'s page and those of its commands, hidden (internal) ones left out, as
/// `clap_mangen::generate_to` does; this one also says which files it wrote.
fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    std::fs::write(&path, page(man)).map_err(|e| Error::io("writing the man page", &path, e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}

/// The page in roff, as `man` reads it.
fn page(man: clap_mangen::Man) -> Vec<u8> {
    let mut page = Vec::new();
    man.render(&mut page)
        .expect("rendering into memory cannot fail");
    page
}

/// Writes to stdout, saying so if it cannot (a full disk behind a redirection). A reader that
/// went away ends the process quietly on Unix (SIGPIPE, as `main` sets it).
fn print_bytes(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("writing to", "stdout", e))
}
