//! The app's own preferences (not berthd's settings): `desktop.json` in the platform's config
//! directory, beside berthd's `settings.json`. Keys this version does not know are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Prefs {
    /// Quitting the app leaves berthd (and its containers) running.
    pub keep_engine_running_on_quit: bool,
    /// Start the app when the user logs in (Linux: an XDG autostart entry).
    pub start_at_login: bool,
    /// `system`, `light` or `dark`.
    pub theme: String,
    /// The backend berthd is started with when `BERTH_BACKEND` is not set (empty: the
    /// platform's).
    pub engine_backend: String,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            keep_engine_running_on_quit: true,
            start_at_login: false,
            theme: "system".into(),
            engine_backend: String::new(),
            other: Default::default(),
        }
    }
}

impl Prefs {
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.theme.as_str(), "system" | "light" | "dark") {
            return Err(format!(
                "theme: {:?} is not one of system, light, dark",
                self.theme
            ));
        }
        if !matches!(
            self.engine_backend.as_str(),
            "" | "direct" | "qemu" | "vz" | "hyperv"
        ) {
            return Err(format!(
                "engineBackend: {:?} is not one of direct, qemu, vz, hyperv",
                self.engine_backend
            ));
        }
        Ok(())
    }
}

/// `BERTH_DESKTOP_PREFS`, else `desktop.json` beside berthd's default settings file.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_DESKTOP_PREFS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    berth_host::paths::settings().with_file_name("desktop.json")
}

/// The file's preferences; the defaults when it is missing or unreadable (the reason is
/// returned beside them, so the app can say so).
pub fn load(path: &Path) -> (Prefs, Option<String>) {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Prefs>(&bytes) {
            Ok(p) => (p, None),
            Err(e) => (
                Prefs::default(),
                Some(format!("{}: {e}; using the defaults", path.display())),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Prefs::default(), None),
        Err(e) => (Prefs::default(), Some(format!("{}: {e}", path.display()))),
    }
}

/// Writes the file atomically (a temporary file renamed over it).
pub fn save(path: &Path, prefs: &Prefs) -> Result<(), String> {
    prefs.validate()?;
    let dir = path
        .parent()
        .ok_or("the preferences path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(prefs).map_err(|e| e.to_string())?;
    text.push('\n');
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Start at login. Linux: `$XDG_CONFIG_HOME/autostart/berth.desktop` written or removed. macOS
/// and Windows: not wired yet (the preference is stored).
pub fn apply_autostart(enabled: bool, exe: &Path) -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| berth_host::paths::home().join(".config"));
    let entry = config.join("autostart/berth.desktop");
    if enabled {
        let dir = entry.parent().unwrap_or(&config);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = format!(
            "[Desktop Entry]\nType=Application\nName=Berth\nComment=Containers on your desktop\nExec=\"{}\" --hidden\nX-GNOME-Autostart-enabled=true\n",
            exe.display()
        );
        std::fs::write(&entry, text).map_err(|e| format!("{}: {e}", entry.display()))
    } else {
        match std::fs::remove_file(&entry) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", entry.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_engine_running_and_unknown_keys_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth/desktop.json");
        let (p, err) = load(&file);
        assert!(err.is_none());
        assert!(p.keep_engine_running_on_quit);
        assert_eq!(p.theme, "system");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, r#"{"theme":"dark","windowSize":[1,2]}"#).unwrap();
        let (mut p, _) = load(&file);
        assert_eq!(p.theme, "dark");
        assert!(p.keep_engine_running_on_quit);
        p.keep_engine_running_on_quit = false;
        save(&file, &p).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["windowSize"], serde_json::json!([1, 2]));
        assert_eq!(v["keepEngineRunningOnQuit"], false);
        assert_eq!(v["startAtLogin"], false);
    }

    #[test]
    fn a_bad_theme_is_refused_and_a_broken_file_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desktop.json");
        let p = Prefs {
            theme: "blue".into(),
            ..Prefs::default()
        };
        assert!(save(&file, &p).unwrap_err().contains("theme"));
        assert!(!file.exists());
        std::fs::write(&file, "{not json").unwrap();
        let (p, err) = load(&file);
        assert_eq!(p, Prefs::default());
        assert!(err.unwrap().contains("using the defaults"));
    }
}
