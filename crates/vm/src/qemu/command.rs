//! The QEMU command line, as a pure function of the configuration (docs/vm.md explains each flag).

use std::ffi::OsString;
use std::path::Path;

use super::{Accelerator, GuestArch, QemuConfig, StatePaths};

/// Arguments for `qemu-system-*` (without the program name).
pub fn qemu_args(config: &QemuConfig, accel: Accelerator, paths: &StatePaths) -> Vec<OsString> {
    let mut a = Args::default();
    // Nothing QEMU would add by itself: no default NIC, VGA, floppy, CD-ROM, monitor, or user
    // config file; the machine ends instead of rebooting, so a guest panic ends QEMU.
    a.push([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    a.push(["-name", "berth,process=berth-vm"]);
    match config.arch {
        GuestArch::Amd64 => a.push(["-machine", "q35"]),
        GuestArch::Arm64 => a.push(["-machine", "virt,gic-version=max"]),
    }
    a.push(["-accel", accel.qemu_name()]);
    let cpu = match (accel, config.arch) {
        (Accelerator::Kvm, _) => "host",
        (Accelerator::Tcg, GuestArch::Amd64) => "max",
        (Accelerator::Tcg, GuestArch::Arm64) => "cortex-a72",
    };
    a.push(["-cpu", cpu]);
    a.push(["-smp".to_string(), config.cpus.to_string()]);
    a.push(["-m".to_string(), format!("{}M", config.memory_mib)]);
    // vhost-user devices run in another process that maps guest memory: it must be shareable.
    a.push([
        "-object".to_string(),
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            config.memory_mib
        ),
    ]);
    a.push(["-numa", "node,memdev=mem"]);

    // Direct kernel boot.
    a.push_path("-kernel", &config.kernel);
    a.push_path("-initrd", &config.initramfs);
    a.push(["-append".to_string(), kernel_cmdline(config)]);

    // The serial console goes to a file: `berth doctor` and start errors show its tail.
    a.push([
        "-chardev".to_string(),
        format!("file,id=console,path={}", opt_path(&paths.console_log)),
    ]);
    a.push(["-serial", "chardev:console"]);

    // vsock through the vhost-device-vsock helper (no /dev/vhost-vsock needed).
    a.push([
        "-chardev".to_string(),
        format!("socket,id=vsock,path={}", opt_path(&paths.vhost_socket)),
    ]);
    a.push(["-device", "vhost-user-vsock-pci,chardev=vsock"]);

    // The data disk: raw, QEMU's default writeback cache (guest flushes become host fdatasync).
    a.push([
        "-drive".to_string(),
        format!(
            "file={},format=raw,if=none,id=data,aio=threads,discard=unmap",
            opt_path(&config.data_disk)
        ),
    ]);
    a.push(["-device", "virtio-blk-pci,drive=data"]);

    // The guest's own network: user-mode NAT; no option ROM (nothing PXE-boots here).
    a.push(["-netdev", "user,id=net0"]);
    a.push(["-device", "virtio-net-pci,netdev=net0,romfile="]);

    a.push([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", opt_path(&paths.qmp_socket)),
    ]);
    a.0
}

fn kernel_cmdline(config: &QemuConfig) -> String {
    let console = match config.arch {
        GuestArch::Amd64 => "ttyS0",
        GuestArch::Arm64 => "ttyAMA0",
    };
    crate::guest::kernel_cmdline(console, &config.kernel_args)
}

/// A path inside a QEMU option value, where `,` must be doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<S: Into<OsString>, const N: usize>(&mut self, items: [S; N]) {
        self.0.extend(items.into_iter().map(Into::into));
    }

    fn push_path(&mut self, flag: &str, path: &Path) {
        self.0.push(flag.into());
        self.0.push(path.as_os_str().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(arch: GuestArch, accel: Accelerator) -> Vec<String> {
        let mut config = QemuConfig::new(
            arch,
            PathBuf::from("/k/bzImage"),
            PathBuf::from("/k/initramfs.cpio.gz"),
            PathBuf::from("/state,dir"),
        );
        config.kernel_args.push("berth.log=debug".into());
        let paths = StatePaths::new(&config.state_dir);
        qemu_args(&config, accel, &paths)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_amd64_command_line() {
        let a = args(GuestArch::Amd64, Accelerator::Tcg);
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(value_of(&a, "-accel"), ["tcg"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert_eq!(value_of(&a, "-machine"), ["q35"]);
        assert_eq!(
            value_of(&a, "-append"),
            ["console=ttyS0 quiet panic=-1 berth.log=debug"]
        );
        assert!(value_of(&a, "-device").contains(&"vhost-user-vsock-pci,chardev=vsock"));
        // Commas in paths are escaped inside option values.
        assert_eq!(
            value_of(&a, "-qmp"),
            ["unix:/state,,dir/qmp.sock,server=on,wait=off"]
        );
        assert!(value_of(&a, "-object")[0].contains("share=on"));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_arm64_its_console() {
        let a = args(GuestArch::Arm64, Accelerator::Kvm);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert!(value_of(&a, "-append")[0].starts_with("console=ttyAMA0"));
    }
}
