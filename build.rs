//! Build script: the git commit that `sqs2pg --version` names.
//!
//! `SQS2PG_GIT_COMMIT`, when set, wins (a build from a source archive can give it). Otherwise
//! the commit is read from `.git` itself: `HEAD`, the branch it names (a loose ref, or
//! `packed-refs`). The files are read rather than `git` run, so a container build, whose context
//! carries only `.git/HEAD` and the refs (see `.dockerignore`), and a machine without git both
//! get it. Written here: the crates that do this (vergen, built) bring git2 or gix, a large
//! build for two small files.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SQS2PG_GIT_COMMIT");
    let commit = match std::env::var("SQS2PG_GIT_COMMIT") {
        Ok(given) if !given.is_empty() => Some(given),
        _ => std::env::var_os("CARGO_MANIFEST_DIR")
            .and_then(|root| from_git(&Path::new(&root).join(".git"))),
    };
    if let Some(commit) = commit {
        println!("cargo:rustc-env=SQS2PG_GIT_COMMIT={commit}");
    }
}

/// The commit `HEAD` points at, watching the files it was read from (and only files that
/// exist: cargo runs a build script again on every build while a watched file is missing).
fn from_git(git: &Path) -> Option<String> {
    let watch = |path: &Path| println!("cargo:rerun-if-changed={}", path.display());
    let head = git.join("HEAD");
    if !head.is_file() {
        return None;
    }
    watch(&head);
    let head = std::fs::read_to_string(&head).ok()?;
    let Some(reference) = head.trim().strip_prefix("ref: ") else {
        // A detached HEAD holds the commit itself.
        return object_name(&head);
    };
    let packed = git.join("packed-refs");
    if packed.is_file() {
        watch(&packed);
    }
    let loose = git.join(reference);
    // The branch's folder: a commit on a branch known only from packed-refs writes its loose
    // file there (cargo watches a folder's files).
    if let Some(folder) = loose.parent().filter(|f| f.is_dir()) {
        watch(folder);
    }
    if loose.is_file() {
        return object_name(&std::fs::read_to_string(&loose).ok()?);
    }
    std::fs::read_to_string(&packed)
        .ok()?
        .lines()
        .find_map(|line| {
            let (name, of) = line.split_once(' ')?;
            (of.trim() == reference)
                .then(|| object_name(name))
                .flatten()
        })
}

/// A full object name: 40 hex digits (SHA-1) or 64 (SHA-256).
fn object_name(text: &str) -> Option<String> {
    let text = text.trim();
    ((text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}
