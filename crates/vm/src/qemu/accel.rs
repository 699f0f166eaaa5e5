//! Which accelerator QEMU gets. Decided here, never left to QEMU's own fallback: a `/dev/kvm`
//! that exists can still be unable to run a stock guest (nested or paravirtual KVM), so KVM is
//! used only where the host's real KVM module is loaded and the guest has the host's
//! architecture; everything else runs under TCG.

use std::path::Path;

use super::GuestArch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    /// The value of QEMU's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "KVM",
            Accelerator::Tcg => "TCG (software emulation)",
        })
    }
}

/// The choice and the reason for it, in words `berth doctor` can print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accelerator: Accelerator,
    pub reason: String,
}

/// Chooses the accelerator for a guest of `guest` architecture on this host.
pub fn detect(guest: GuestArch) -> AccelChoice {
    detect_in(Path::new("/"), GuestArch::host(), guest)
}

/// [`detect`] against another root (tests give a fake `/sys` and `/dev`).
pub fn detect_in(root: &Path, host: Option<GuestArch>, guest: GuestArch) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accelerator: Accelerator::Tcg,
        reason,
    };
    if host != Some(guest) {
        return tcg(format!(
            "the guest is {guest} and the host is not: emulating it"
        ));
    }
    // On x86 the vendor module must be loaded; a paravirtual /dev/kvm (kvm_pvm and the like)
    // has only `kvm` and cannot run a stock guest kernel. On arm64 KVM is built into the kernel.
    let module = match guest {
        GuestArch::Amd64 => ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| root.join("sys/module").join(m).is_dir()),
        GuestArch::Arm64 => Some("kvm"),
    };
    let Some(module) = module else {
        return tcg("neither kvm_intel nor kvm_amd is loaded".into());
    };
    let dev = root.join("dev/kvm");
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        Ok(_) => AccelChoice {
            accelerator: Accelerator::Kvm,
            reason: format!("{module} is loaded and {} is usable", dev.display()),
        },
        Err(e) => tcg(format!("{module} is loaded but {}: {e}", dev.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_without_a_vendor_module_even_with_dev_kvm() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        let c = detect_in(root.path(), Some(GuestArch::Amd64), GuestArch::Amd64);
        assert_eq!(c.accelerator, Accelerator::Tcg);
        assert!(c.reason.contains("kvm_intel"), "{}", c.reason);
    }

    #[test]
    fn kvm_with_a_vendor_module_and_a_usable_device() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm_amd")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        let c = detect_in(root.path(), Some(GuestArch::Amd64), GuestArch::Amd64);
        assert_eq!(c.accelerator, Accelerator::Kvm, "{}", c.reason);
    }

    #[test]
    fn tcg_for_a_foreign_guest() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm_intel")).unwrap();
        let c = detect_in(root.path(), Some(GuestArch::Amd64), GuestArch::Arm64);
        assert_eq!(c.accelerator, Accelerator::Tcg);
    }
}
