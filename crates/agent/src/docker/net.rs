//! The network parts of Docker's container JSON: `NetworkSettings` (inspect and `ps`),
//! `HostConfig.PortBindings`, `Config.ExposedPorts` and `ps`'s `Ports`, as dockerd shows them.

use std::collections::BTreeMap;

use berth_proto::{ContainerInfo, ContainerSpec, ContainerStatus, PortBinding};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::model::{EndpointSettings, PortSummary, SummaryNetworkSettings};
use crate::ports::{parse_port_key, port_key};

/// The network a container is on, by Docker's name ("bridge", "host", "none").
pub fn network_name(spec: &ContainerSpec) -> &str {
    match spec.host.network_mode.as_str() {
        "" | "default" => "bridge",
        m => m,
    }
}

fn running(c: &ContainerInfo) -> bool {
    matches!(
        c.state.status,
        ContainerStatus::Running | ContainerStatus::Paused
    )
}

/// A stable 64-hex id for things Docker gives ids to (networks, endpoints).
fn id_of(what: &str) -> String {
    hex::encode(Sha256::digest(what.as_bytes()))
}

/// `HostConfig.PortBindings` as requested (host port 0 shows as "").
pub fn port_bindings(spec: &ContainerSpec) -> Value {
    let mut m = Map::new();
    for b in &spec.host.port_bindings {
        let entry = json!({
            "HostIp": b.host_ip,
            "HostPort": if b.host_port == 0 { String::new() } else { b.host_port.to_string() },
        });
        let list = m
            .entry(port_key(b.container_port, &b.protocol))
            .or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(entry);
        }
    }
    Value::Object(m)
}

/// `Config.ExposedPorts`: `{"80/tcp": {}}`, or null when there are none.
pub fn exposed_ports(spec: &ContainerSpec) -> Value {
    if spec.exposed_ports.is_empty() {
        return Value::Null;
    }
    Value::Object(
        spec.exposed_ports
            .iter()
            .map(|k| (k.clone(), json!({})))
            .collect(),
    )
}

/// `NetworkSettings.Ports`: while running, every exposed or published port, with its host
/// bindings (null for one that is only exposed); `{}` otherwise.
fn ports_map(c: &ContainerInfo) -> Value {
    let mut m = Map::new();
    if !running(c) {
        return Value::Object(m);
    }
    for k in &c.spec.exposed_ports {
        m.insert(k.clone(), Value::Null);
    }
    for b in &c.ports {
        let key = port_key(b.container_port, &b.protocol);
        let slot = m.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = json!([]);
        }
        if let Some(a) = slot.as_array_mut() {
            a.push(json!({ "HostIp": b.host_ip, "HostPort": b.host_port.to_string() }));
        }
    }
    Value::Object(m)
}

/// One entry of `NetworkSettings.Networks`.
fn endpoint(c: &ContainerInfo) -> EndpointSettings {
    let name = network_name(&c.spec);
    let (ip, prefix, gateway, mac) = match &c.network {
        Some(n) if running(c) => (
            n.ip_address.clone(),
            n.prefix_len,
            n.gateway.clone(),
            n.mac_address.clone(),
        ),
        _ => (String::new(), 0, String::new(), String::new()),
    };
    let endpoint_id = if ip.is_empty() {
        String::new()
    } else {
        id_of(&format!("berth endpoint {} {ip}", c.id))
    };
    EndpointSettings {
        Aliases: None,
        DNSNames: None,
        DriverOpts: None,
        EndpointID: endpoint_id,
        Gateway: gateway,
        GlobalIPv6Address: String::new(),
        GlobalIPv6PrefixLen: 0,
        IPAMConfig: None,
        IPAddress: ip,
        IPPrefixLen: prefix,
        IPv6Gateway: String::new(),
        Links: None,
        MacAddress: mac,
        NetworkID: id_of(&format!("berth network {name}")),
    }
}

/// `NetworkSettings` of `docker inspect`.
pub fn network_settings(c: &ContainerInfo) -> Value {
    let ep = json!(endpoint(c));
    let mut networks = Map::new();
    networks.insert(network_name(&c.spec).to_string(), ep.clone());
    // The top-level fields are the default bridge's (empty on other networks), as dockerd.
    let bridge = network_name(&c.spec) == "bridge";
    let top = |k: &str, empty: Value| if bridge { ep[k].clone() } else { empty };
    json!({
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": false,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports_map(c),
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
        "EndpointID": top("EndpointID", json!("")),
        "Gateway": top("Gateway", json!("")),
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": top("IPAddress", json!("")),
        "IPPrefixLen": top("IPPrefixLen", json!(0)),
        "IPv6Gateway": "",
        "MacAddress": top("MacAddress", json!("")),
        "Networks": Value::Object(networks),
    })
}

/// `NetworkSettings` of a `docker ps` entry.
pub fn summary_networks(c: &ContainerInfo) -> SummaryNetworkSettings {
    let mut networks = BTreeMap::new();
    networks.insert(network_name(&c.spec).to_string(), endpoint(c));
    SummaryNetworkSettings { Networks: networks }
}

/// `Ports` of a `docker ps` entry: for a running container its published ports and the
/// exposed ones without a binding; nothing for one that does not run (as dockerd).
pub fn summary_ports(c: &ContainerInfo) -> Vec<PortSummary> {
    let mut out = Vec::new();
    if !running(c) {
        return out;
    }
    let published: &[PortBinding] = &c.ports;
    for b in published {
        out.push(PortSummary {
            IP: Some(b.host_ip.clone()),
            PrivatePort: b.container_port,
            PublicPort: Some(b.host_port),
            Type: b.protocol.clone(),
        });
    }
    for k in &c.spec.exposed_ports {
        let Ok((port, proto)) = parse_port_key(k) else {
            continue;
        };
        if !published
            .iter()
            .any(|b| b.container_port == port && b.protocol == proto)
        {
            out.push(PortSummary {
                IP: None,
                PrivatePort: port,
                PublicPort: None,
                Type: proto,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::{ContainerNetwork, ContainerState};

    fn info(status: ContainerStatus) -> ContainerInfo {
        let mut spec = ContainerSpec::default();
        spec.host.network_mode = "bridge".into();
        spec.exposed_ports = vec!["80/tcp".into(), "443/tcp".into()];
        spec.host.port_bindings = vec![PortBinding {
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
            host_port: 0,
        }];
        ContainerInfo {
            id: "ab".repeat(32),
            name: "web".into(),
            spec,
            path: "httpd".into(),
            args: vec![],
            env: vec![],
            working_dir: "/".into(),
            user: String::new(),
            created: "2026-01-01T00:00:00Z".into(),
            state: ContainerState {
                status,
                pid: Some(5),
                exit_code: Some(0),
                started_at: None,
                finished_at: None,
                error: None,
                restart_count: 0,
                oom_killed: false,
            },
            runtime: "runc".into(),
            log_path: String::new(),
            network: Some(ContainerNetwork {
                network: "bridge".into(),
                ip_address: "172.30.0.2".into(),
                prefix_len: 16,
                gateway: "172.30.0.1".into(),
                mac_address: "02:42:ac:1e:00:02".into(),
            }),
            ports: vec![PortBinding {
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
                host_port: 32768,
            }],
            mounts: vec![],
        }
    }

    #[test]
    fn running_container_shows_its_address_and_ports() {
        let c = info(ContainerStatus::Running);
        let v = network_settings(&c);
        assert_eq!(v["IPAddress"], "172.30.0.2");
        assert_eq!(v["IPPrefixLen"], 16);
        assert_eq!(v["Gateway"], "172.30.0.1");
        assert_eq!(v["MacAddress"], "02:42:ac:1e:00:02");
        assert_eq!(v["Networks"]["bridge"]["IPAddress"], "172.30.0.2");
        assert_eq!(
            v["Networks"]["bridge"]["NetworkID"].as_str().unwrap().len(),
            64
        );
        assert_eq!(
            v["Ports"],
            json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}], "443/tcp": null})
        );
        assert_eq!(
            json!(summary_ports(&c)),
            json!([
                {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
                {"PrivatePort": 443, "Type": "tcp"}
            ])
        );
        assert_eq!(
            port_bindings(&c.spec),
            json!({"80/tcp": [{"HostIp": "", "HostPort": ""}]})
        );
        assert_eq!(exposed_ports(&c.spec), json!({"80/tcp": {}, "443/tcp": {}}));
    }

    #[test]
    fn stopped_container_has_no_address() {
        let c = info(ContainerStatus::Exited);
        let v = network_settings(&c);
        assert_eq!(v["IPAddress"], "");
        assert_eq!(v["Networks"]["bridge"]["IPAddress"], "");
        assert_eq!(v["Ports"], json!({}));
        assert!(summary_ports(&c).is_empty());
        let mut none = info(ContainerStatus::Running);
        none.spec.host.network_mode = "none".into();
        none.network = None;
        let v = network_settings(&none);
        assert!(v["Networks"].get("none").is_some());
        assert_eq!(v["IPAddress"], "");
    }
}
