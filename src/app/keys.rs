//! `keygen --ring`: a new key into a ring file (`rekey`, which re-encrypts a table's tokens,
//! is in `rekey.rs`).

use std::path::Path;

use super::rejects::rfc3339;
use super::AppError;
use crate::cli::KeygenArgs;
use crate::config::ConfigError;
use crate::keys::MaskKey;

/// `sqs2pg keygen --ring FILE [--activate]`: adds a new random key to the ring file (created
/// with mode 600 if missing) and returns its id. Existing keys and comments are kept.
///
/// `FILE.new` is created exclusively (mode 600) before the ring is read, so two keygens never
/// both read the same ring and one of them lose the other's key; the new text is written there,
/// synced, and renamed over the ring, and the directory is synced, so a crash leaves the old
/// ring or the new one.
pub fn keygen_ring(path: &Path, activate: bool) -> Result<String, AppError> {
    use std::io::Write as _;
    let shown = path.display().to_string();
    let file_error = |path: &str, error| AppError::File {
        path: path.to_owned(),
        error,
    };
    let temp = format!("{shown}.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            AppError::Quarantine(format!(
                "{temp} exists: another keygen is writing this ring, or one was interrupted (then remove {temp})"
            ))
        } else {
            file_error(&temp, e)
        }
    })?;
    let result = (|| {
        let existing = match path.try_exists() {
            Ok(true) => Some(crate::config::read_key_file(
                path,
                &format!("key ring {shown}"),
            )?),
            Ok(false) => None,
            Err(e) => return Err(file_error(&shown, e)),
        };
        let key_text = zeroize::Zeroizing::new(
            MaskKey::generate_base64().map_err(|e| file_error("the OS random source", e))?,
        );
        let key = MaskKey::from_base64(&key_text).expect("a fresh key decodes");
        let created = rfc3339(std::time::SystemTime::now());
        let (text, id) = crate::keys::ring::add_key(
            existing.as_deref().map(String::as_str),
            &key,
            &key_text,
            &created,
            activate,
        )
        .map_err(|e| ConfigError(format!("key ring {shown}: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| file_error(&shown, e))?;
        let directory = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(directory) {
            let _ = dir.sync_all();
        }
        Ok(id)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// `sqs2pg keygen`: a new key printed, or added to a ring (then only its id is printed). Needs
/// no async runtime, so `main` runs it before starting one.
pub fn keygen(args: &KeygenArgs) -> Result<(), AppError> {
    match &args.ring {
        Some(path) => {
            let id = keygen_ring(path, args.activate)?;
            let active = if args.activate {
                " and made it active"
            } else {
                ""
            };
            println!("added key {id} to {}{active}", path.display());
        }
        None => {
            let key = MaskKey::generate_base64().map_err(|e| {
                AppError::Quarantine(format!("no randomness from the operating system: {e}"))
            })?;
            let key = zeroize::Zeroizing::new(key);
            println!("{}", key.as_str());
        }
    }
    Ok(())
}
