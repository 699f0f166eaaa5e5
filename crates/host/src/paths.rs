//! Default locations. Each can be overridden on berthd's command line (`--socket`,
//! `--data-root`, `--settings`) and on `berth`'s (`--socket`, `BERTH_SOCKET`, …).

use std::path::PathBuf;

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The user's home directory (`HOME`, else `USERPROFILE` on Windows, else `/root`).
pub fn home() -> PathBuf {
    env_dir("HOME")
        .or_else(|| env_dir("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// berthd's socket: `$XDG_RUNTIME_DIR/berth/berthd.sock`, else `~/.berth/run/berthd.sock`.
pub fn socket() -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(d) => d.join("berth/berthd.sock"),
        None => home().join(".berth/run/berthd.sock"),
    }
}

/// Where berthd keeps images and containers: `$XDG_DATA_HOME/berth`, else
/// `~/.local/share/berth`.
pub fn data_root() -> PathBuf {
    match env_dir("XDG_DATA_HOME") {
        Some(d) => d.join("berth"),
        None => home().join(".local/share/berth"),
    }
}

/// The settings file, in the platform's configuration directory:
/// `$XDG_CONFIG_HOME/berth/settings.json` (else `~/.config/berth/settings.json`) on Linux,
/// `~/Library/Application Support/Berth/settings.json` on macOS, `%APPDATA%\Berth\settings.json`
/// on Windows.
pub fn settings() -> PathBuf {
    if cfg!(target_os = "macos") {
        return home().join("Library/Application Support/Berth/settings.json");
    }
    if cfg!(windows) {
        if let Some(d) = env_dir("APPDATA") {
            return d.join("Berth").join("settings.json");
        }
    }
    match env_dir("XDG_CONFIG_HOME") {
        Some(d) => d.join("berth/settings.json"),
        None => home().join(".config/berth/settings.json"),
    }
}
