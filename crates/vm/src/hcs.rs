//! The pure parts of the Hyper-V backend (`hyperv.rs`), compiled and tested on every host: the
//! Hyper-V socket service ids that stand for vsock ports, GUID text, the Host Compute Service's
//! compute-system document (schema 2.1) for Berth's guest, and reading what HCS answers.
//!
//! Linux's `hv_sock` maps vsock port `P` to the Hyper-V socket service
//! `{P:08x}-facb-11e6-bd58-64006a7986d3` (the "VSOCK template"), in both directions: the host
//! connects to the guest's port `P` at that service id of the VM, and a guest that connects to
//! host port `P` reaches the host socket bound to that service id and the VM's runtime id.

use serde_json::{json, Map, Value};

/// The Hyper-V socket service id of vsock port 0; a port goes into the first 32 bits.
pub const VSOCK_TEMPLATE: u128 = 0x0000_0000_facb_11e6_bd58_6400_6a79_86d3;

/// Who may bind and connect Hyper-V sockets for Berth's VM: SYSTEM, Administrators and
/// Hyper-V Administrators (who alone may create compute systems anyway).
pub const SOCKET_SDDL: &str = "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;HA)";

/// The Hyper-V socket service id that Linux's `hv_sock` uses for vsock `port`.
pub fn vsock_service_id(port: u32) -> u128 {
    (u128::from(port) << 96) | VSOCK_TEMPLATE
}

/// A GUID as HCS and Windows print it, without braces: `01234567-89ab-cdef-0123-456789abcdef`.
pub fn format_guid(guid: u128) -> String {
    let h = format!("{guid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Reads a GUID in the 8-4-4-4-12 form, with or without braces, any case.
pub fn parse_guid(text: &str) -> Option<u128> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let groups: Vec<&str> = t.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12]
        || !groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    u128::from_str_radix(&groups.concat(), 16).ok()
}

/// What Berth's guest needs from a compute system; paths are Windows paths, as HCS reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeSystemSpec {
    /// Shown by `hcsdiag list` as the system's owner.
    pub owner: String,
    /// The kernel (`bzImage`, or an uncompressed `vmlinux`) and the initramfs.
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The VHDX data disk, attached on SCSI controller 0, LUN 0 (`/dev/sda` in the guest).
    pub data_disk: String,
    /// A named pipe (`\\.\pipe\…`) that COM1 (`ttyS0`) is connected to, for the console log.
    pub console_pipe: Option<String>,
    /// The vsock ports listed in the Hyper-V socket service table.
    pub vsock_ports: Vec<u32>,
}

/// The compute-system document (`HcsCreateComputeSystem`'s configuration) for `spec`: a VM
/// booted with `LinuxKernelDirect`, its memory and processors, the data disk on SCSI, Hyper-V
/// sockets open to [`SOCKET_SDDL`], COM1 on a pipe. A guest reset stops the machine
/// (`StopOnReset`), and closing berthd's last handle to the system ends it
/// (`ShouldTerminateOnLastHandleClosed`), so no VM outlives berthd.
pub fn compute_system_document(spec: &ComputeSystemSpec) -> Value {
    let mut services = Map::new();
    for port in &spec.vsock_ports {
        services.insert(
            format_guid(vsock_service_id(*port)),
            json!({
                "BindSecurityDescriptor": SOCKET_SDDL,
                "ConnectSecurityDescriptor": SOCKET_SDDL,
            }),
        );
    }
    let mut devices = json!({
        "Scsi": {
            "0": {
                "Attachments": {
                    "0": { "Type": "VirtualDisk", "Path": spec.data_disk }
                }
            }
        },
        "HvSocket": {
            "HvSocketConfig": {
                "DefaultBindSecurityDescriptor": SOCKET_SDDL,
                "DefaultConnectSecurityDescriptor": SOCKET_SDDL,
                "ServiceTable": services,
            }
        },
    });
    if let Some(pipe) = &spec.console_pipe {
        devices["ComPorts"] = json!({ "0": { "NamedPipe": pipe } });
    }
    json!({
        "Owner": spec.owner,
        "SchemaVersion": { "Major": 2, "Minor": 1 },
        "ShouldTerminateOnLastHandleClosed": true,
        "VirtualMachine": {
            "StopOnReset": true,
            "Chipset": {
                "LinuxKernelDirect": {
                    "KernelFilePath": spec.kernel,
                    "InitRdPath": spec.initrd,
                    "KernelCmdLine": spec.cmdline,
                }
            },
            "ComputeTopology": {
                // Hyper-V sizes memory in 2 MiB steps.
                "Memory": { "SizeInMB": spec.memory_mib.div_ceil(2) * 2, "AllowOvercommit": true },
                "Processor": { "Count": spec.cpus.max(1) },
            },
            "Devices": devices,
        }
    })
}

/// The kernel command-line options the Hyper-V guest needs on top of
/// [`crate::guest::kernel_cmdline`]: the data disk is SCSI (`/dev/sda`), and only COM1 exists.
pub fn hyperv_kernel_args() -> Vec<String> {
    vec![
        "berth.disk=/dev/sda".into(),
        "8250_core.nr_uarts=1".into(),
        "8250_core.skip_txen_test=1".into(),
    ]
}

/// What `HcsGetComputeSystemProperties` says about a system (its basic properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemProperties {
    /// "Created", "Running", "Paused", "Stopped", …
    pub state: Option<String>,
    /// The VM's runtime id: the `VmId` of Hyper-V socket addresses.
    pub runtime_id: Option<u128>,
}

/// Reads a properties document; `None` when it is not JSON.
pub fn parse_properties(document: &str) -> Option<SystemProperties> {
    let v: Value = serde_json::from_str(document).ok()?;
    Some(SystemProperties {
        state: v.get("State").and_then(Value::as_str).map(str::to_owned),
        runtime_id: v
            .get("RuntimeId")
            .and_then(Value::as_str)
            .and_then(parse_guid),
    })
}

/// The human part of an HCS result document (`{"Error": …, "ErrorMessage": …, "ErrorEvents":
/// [{"Message": …}]}`), or `None` when it carries no message.
pub fn describe_result(document: &str) -> Option<String> {
    let v: Value = serde_json::from_str(document).ok()?;
    let mut parts = Vec::new();
    if let Some(m) = v.get("ErrorMessage").and_then(Value::as_str) {
        parts.push(m.trim().to_string());
    }
    if let Some(events) = v.get("ErrorEvents").and_then(Value::as_array) {
        for e in events {
            if let Some(m) = e.get("Message").and_then(Value::as_str) {
                let m = m.trim().to_string();
                if !m.is_empty() && !parts.contains(&m) {
                    parts.push(m);
                }
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// What a system-exited event's data says (`{"Status": hresult, "ExitType": …}`), as text.
pub fn describe_exit(event_data: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(event_data) else {
        return if event_data.trim().is_empty() {
            "the VM exited".into()
        } else {
            format!("the VM exited: {}", event_data.trim())
        };
    };
    let exit_type = v.get("ExitType").and_then(Value::as_str);
    let status = v.get("Status").and_then(Value::as_i64);
    match (exit_type, status) {
        (Some(t), Some(s)) if s != 0 => {
            format!("the VM exited ({t}, status 0x{:08x})", s as u32)
        }
        (Some(t), _) => format!("the VM exited ({t})"),
        (None, Some(s)) if s != 0 => format!("the VM exited (status 0x{:08x})", s as u32),
        _ => "the VM exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_ports_map_to_hv_sock_service_ids() {
        assert_eq!(
            format_guid(vsock_service_id(1024)),
            "00000400-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(
            format_guid(vsock_service_id(1025)),
            "00000401-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(
            format_guid(vsock_service_id(0xdead_beef)),
            "deadbeef-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(vsock_service_id(0), VSOCK_TEMPLATE);
    }

    #[test]
    fn guids_round_trip() {
        let g = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128;
        assert_eq!(format_guid(g), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(parse_guid("01234567-89AB-cdef-0123-456789abcdef"), Some(g));
        assert_eq!(
            parse_guid("{01234567-89ab-cdef-0123-456789abcdef}"),
            Some(g)
        );
        assert_eq!(parse_guid("01234567-89ab-cdef-0123456789abcdef"), None);
        assert_eq!(parse_guid("0123456g-89ab-cdef-0123-456789abcdef"), None);
        assert_eq!(parse_guid(""), None);
    }

    fn spec() -> ComputeSystemSpec {
        ComputeSystemSpec {
            owner: "berth".into(),
            kernel: r"C:\berth\vm\amd64\bzImage".into(),
            initrd: r"C:\berth\vm\amd64\initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 quiet panic=-1 berth.disk=/dev/sda".into(),
            memory_mib: 2048,
            cpus: 4,
            data_disk: r"C:\berth\state\data.vhdx".into(),
            console_pipe: Some(r"\\.\pipe\berth-console".into()),
            vsock_ports: vec![1024, 1025],
        }
    }

    #[test]
    fn document_boots_the_kernel_directly_with_disk_sockets_and_console() {
        let d = compute_system_document(&spec());
        assert_eq!(d["SchemaVersion"], json!({"Major": 2, "Minor": 1}));
        assert_eq!(d["Owner"], "berth");
        assert_eq!(d["ShouldTerminateOnLastHandleClosed"], true);
        let vm = &d["VirtualMachine"];
        assert_eq!(vm["StopOnReset"], true);
        let boot = &vm["Chipset"]["LinuxKernelDirect"];
        assert_eq!(boot["KernelFilePath"], r"C:\berth\vm\amd64\bzImage");
        assert_eq!(boot["InitRdPath"], r"C:\berth\vm\amd64\initramfs.cpio.gz");
        assert_eq!(
            boot["KernelCmdLine"],
            "console=ttyS0 quiet panic=-1 berth.disk=/dev/sda"
        );
        assert_eq!(vm["ComputeTopology"]["Memory"]["SizeInMB"], 2048);
        assert_eq!(vm["ComputeTopology"]["Processor"]["Count"], 4);
        let dev = &vm["Devices"];
        assert_eq!(
            dev["Scsi"]["0"]["Attachments"]["0"],
            json!({"Type": "VirtualDisk", "Path": r"C:\berth\state\data.vhdx"})
        );
        assert_eq!(dev["ComPorts"]["0"]["NamedPipe"], r"\\.\pipe\berth-console");
        let hv = &dev["HvSocket"]["HvSocketConfig"];
        assert_eq!(hv["DefaultBindSecurityDescriptor"], SOCKET_SDDL);
        let table = hv["ServiceTable"].as_object().unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table["00000400-facb-11e6-bd58-64006a7986d3"]["ConnectSecurityDescriptor"],
            SOCKET_SDDL
        );
        assert!(table.contains_key("00000401-facb-11e6-bd58-64006a7986d3"));
    }

    #[test]
    fn memory_is_rounded_up_to_hyper_v_steps_and_cpus_to_one() {
        let mut s = spec();
        s.memory_mib = 1025;
        s.cpus = 0;
        let d = compute_system_document(&s);
        assert_eq!(
            d["VirtualMachine"]["ComputeTopology"]["Memory"]["SizeInMB"],
            1026
        );
        assert_eq!(
            d["VirtualMachine"]["ComputeTopology"]["Processor"]["Count"],
            1
        );
    }

    #[test]
    fn no_console_pipe_means_no_com_port() {
        let mut s = spec();
        s.console_pipe = None;
        let d = compute_system_document(&s);
        assert!(d["VirtualMachine"]["Devices"].get("ComPorts").is_none());
    }

    #[test]
    fn reads_properties_results_and_exits() {
        let p = parse_properties(
            r#"{"Id":"berth","State":"Running","RuntimeId":"{01234567-89ab-cdef-0123-456789abcdef}"}"#,
        )
        .unwrap();
        assert_eq!(p.state.as_deref(), Some("Running"));
        assert_eq!(
            p.runtime_id,
            Some(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
        );
        assert_eq!(parse_properties("not json"), None);

        assert_eq!(
            describe_result(
                r#"{"Error":-2147024809,"ErrorMessage":"The parameter is incorrect.","ErrorEvents":[{"Message":"Kernel file not found"},{"Message":"The parameter is incorrect."}]}"#
            )
            .as_deref(),
            Some("The parameter is incorrect.; Kernel file not found")
        );
        assert_eq!(describe_result("{}"), None);

        assert_eq!(
            describe_exit(r#"{"Status":-2147023895,"ExitType":"UnexpectedExit"}"#),
            "the VM exited (UnexpectedExit, status 0x800703e9)"
        );
        assert_eq!(
            describe_exit(r#"{"Status":0,"ExitType":"GracefulExit"}"#),
            "the VM exited (GracefulExit)"
        );
        assert_eq!(describe_exit(""), "the VM exited");
    }

    #[test]
    fn hyperv_guest_uses_the_scsi_disk() {
        let line = crate::guest::kernel_cmdline("ttyS0", &hyperv_kernel_args());
        assert!(line.starts_with("console=ttyS0 quiet panic=-1 berth.disk=/dev/sda"));
    }
}
