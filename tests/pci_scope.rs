//! Goal: the PCI scope as written stays true. `docker-compose.yml`, `pci/topology.toml` and
//! `pci/fabric.nft` describe the same segmented deployment (networks, members, addresses,
//! flows), the compose file follows the segmentation and secret rules of `pci/DATA-FLOW.md`, the
//! images run without a shell as non-root, and every path `pci/CONTROLS.md` names exists.
//!
//! Docker is not on these machines, so the compose file is checked as data; the testbed
//! (`tests/pci_segmentation.rs`) proves the same topology with real packets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A flow: (network, from host, to host, port).
type Flow = (String, String, String, u16);

struct Topology {
    /// network -> (subnet, internal, compose_only, bridge)
    networks: BTreeMap<String, (String, bool, bool, Option<String>)>,
    /// host -> network -> address
    addresses: BTreeMap<String, BTreeMap<String, String>>,
    /// host -> network -> the range its address stands for in the rules (the internet)
    ranges: BTreeMap<String, BTreeMap<String, String>>,
    testbed_only: BTreeSet<String>,
    flows: BTreeSet<Flow>,
}

fn topology() -> Topology {
    let t: toml::Table = toml::from_str(&read("pci/topology.toml")).unwrap();
    let mut networks = BTreeMap::new();
    for (name, n) in t["networks"].as_table().unwrap() {
        networks.insert(
            name.clone(),
            (
                n["subnet"].as_str().unwrap().to_owned(),
                n["internal"].as_bool().unwrap(),
                n.get("compose_only").and_then(|v| v.as_bool()) == Some(true),
                n.get("bridge").and_then(|v| v.as_str()).map(str::to_owned),
            ),
        );
    }
    let strings = |v: &toml::Value| -> BTreeMap<String, String> {
        v.as_table()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    };
    let mut addresses = BTreeMap::new();
    let mut ranges = BTreeMap::new();
    let mut testbed_only = BTreeSet::new();
    for (name, h) in t["hosts"].as_table().unwrap() {
        addresses.insert(name.clone(), strings(&h["addresses"]));
        if let Some(r) = h.get("range") {
            ranges.insert(name.clone(), strings(r));
        }
        if h.get("testbed_only").and_then(|v| v.as_bool()) == Some(true) {
            testbed_only.insert(name.clone());
        }
    }
    let flows = t["flow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["network"].as_str().unwrap().to_owned(),
                f["from"].as_str().unwrap().to_owned(),
                f["to"].as_str().unwrap().to_owned(),
                u16::try_from(f["port"].as_integer().unwrap()).unwrap(),
            )
        })
        .collect();
    Topology {
        networks,
        addresses,
        ranges,
        testbed_only,
        flows,
    }
}

fn compose() -> Yaml {
    serde_norway::from_str(&read("docker-compose.yml")).unwrap()
}

fn services(c: &Yaml) -> BTreeMap<String, Yaml> {
    c["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// A service's networks and its fixed address on each.
fn service_networks(s: &Yaml) -> BTreeMap<String, String> {
    s["networks"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let address = v["ipv4_address"]
                .as_str()
                .unwrap_or_else(|| panic!("network {k:?}: no fixed ipv4_address"));
            (k.as_str().unwrap().to_owned(), address.to_owned())
        })
        .collect()
}

/// The container ports a service publishes (short `HOST:CONTAINER` or long syntax).
fn published(s: &Yaml) -> Vec<u16> {
    let Some(ports) = s.get("ports").and_then(|p| p.as_sequence()) else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| match p {
            Yaml::String(s) => s
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap(),
            Yaml::Mapping(_) => u16::try_from(p["target"].as_u64().unwrap()).unwrap(),
            other => panic!("unexpected ports entry {other:?}"),
        })
        .collect()
}

#[test]
fn compose_has_the_topologys_networks_members_and_addresses() {
    let topo = topology();
    let c = compose();
    let nets = c["networks"].as_mapping().unwrap();
    let names: BTreeSet<String> = nets
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        topo.networks.keys().cloned().collect(),
        "compose networks"
    );
    for (name, (subnet, internal, _, _)) in &topo.networks {
        let n = &nets[name.as_str()];
        assert_eq!(
            n["internal"].as_bool().unwrap_or(false),
            *internal,
            "network {name}: internal"
        );
        assert_eq!(
            n["ipam"]["config"][0]["subnet"].as_str(),
            Some(subnet.as_str()),
            "network {name}: subnet"
        );
    }
    let services = services(&c);
    let expected: BTreeSet<&String> = topo
        .addresses
        .keys()
        .filter(|h| !topo.testbed_only.contains(*h))
        .collect();
    assert_eq!(
        services.keys().collect::<BTreeSet<_>>(),
        expected,
        "compose services are the topology's hosts"
    );
    for (name, s) in &services {
        assert_eq!(
            &service_networks(s),
            &topo.addresses[name],
            "service {name}: its networks and addresses"
        );
    }
}

#[test]
fn compose_segments_as_the_scope_says() {
    let topo = topology();
    let c = compose();
    let services = services(&c);
    let members = |network: &str| -> BTreeSet<String> {
        services
            .iter()
            .filter(|(_, s)| service_networks(s).contains_key(network))
            .map(|(n, _)| n.clone())
            .collect()
    };
    // Only edge publishes, and only the ports of flows from the internet.
    let edge_flows: BTreeSet<(String, u16)> = topo
        .flows
        .iter()
        .filter(|(_, from, _, _)| from == "internet")
        .map(|(_, _, to, port)| (to.clone(), *port))
        .collect();
    let mut publishing = BTreeSet::new();
    for (name, s) in &services {
        for port in published(s) {
            assert!(
                service_networks(s).contains_key("edge"),
                "{name} publishes {port} but is not on edge"
            );
            publishing.insert((name.clone(), port));
        }
    }
    assert_eq!(
        publishing, edge_flows,
        "published ports = the internet's flows"
    );
    // No container-to-container traffic on edge.
    assert_eq!(
        c["networks"]["edge"]["driver_opts"]["com.docker.network.bridge.enable_icc"].as_str(),
        Some("false"),
        "edge must not let billing and the vault talk"
    );
    // Every other network joins only the pairs a flow needs.
    for network in topo
        .networks
        .keys()
        .filter(|n| *n != "edge" && *n != "egress")
    {
        let m: Vec<String> = members(network).into_iter().collect();
        for (i, a) in m.iter().enumerate() {
            for b in &m[i + 1..] {
                let flow = topo
                    .flows
                    .iter()
                    .any(|(n, f, t, _)| n == network && ((f == a && t == b) || (f == b && t == a)));
                assert!(flow, "{a} and {b} share {network} but no flow needs it");
            }
        }
    }
    for (network, from, to, _) in &topo.flows {
        if from == "internet" {
            continue;
        }
        let m = members(network);
        assert!(
            m.contains(from) && m.contains(to),
            "flow {from} -> {to} on {network}: not both on it"
        );
    }
    // The three sentences, checked directly.
    let reach = |host: &str| -> BTreeSet<String> {
        service_networks(&services[host])
            .keys()
            .flat_map(|n| members(n))
            .filter(|h| h != host)
            .collect()
    };
    assert_eq!(
        reach("vault-db"),
        BTreeSet::from(["tokenizer".to_owned()]),
        "the vault database: from the vault only"
    );
    assert_eq!(
        reach("billing-db"),
        BTreeSet::from(["carebill".to_owned()]),
        "billing's database: from billing only"
    );
    assert!(
        members("pci").is_disjoint(&members("app")),
        "nothing in pci may be on app"
    );
    for internal in ["app", "pci", "pci-link", "pci-egress"] {
        assert_eq!(
            c["networks"][internal]["internal"].as_bool(),
            Some(true),
            "{internal} must be internal"
        );
    }
    // Each listener binds the one network it serves.
    let env = |s: &str, k: &str| services[s]["environment"][k].as_str().unwrap().to_owned();
    assert_eq!(
        env("tokenizer", "TOKENIZER_COLLECT_ADDR"),
        format!("{}:8444", topo.addresses["tokenizer"]["edge"])
    );
    assert_eq!(
        env("tokenizer", "TOKENIZER_INTERNAL_ADDR"),
        format!("{}:8445", topo.addresses["tokenizer"]["pci-link"])
    );
    assert_eq!(
        env("carebill", "CAREBILL_ADDR"),
        format!("{}:8443", topo.addresses["carebill"]["edge"])
    );
}

#[test]
fn compose_keeps_secrets_in_files_and_runs_hardened() {
    let c = compose();
    let secrets = c["secrets"].as_mapping().unwrap();
    for (name, s) in secrets {
        let file = s["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret {name:?} must come from a file"));
        assert!(
            file.starts_with("./secrets/"),
            "secret {name:?} is outside ./secrets/"
        );
    }
    for ignore in [".gitignore", ".dockerignore"] {
        assert!(
            read(ignore)
                .lines()
                .any(|l| l.trim_matches('/') == "secrets"),
            "{ignore} must exclude secrets/"
        );
    }
    let looks_secret = |v: &str| {
        v.contains("-----BEGIN")
            || v.contains("sk_live_")
            || v.contains("sk_test_")
            || v.contains("rk_live_")
            || v.contains("whsec_")
            || v.contains("cbk_")
            // a URL with a password: scheme://user:password@host
            || v.split("://").nth(1).is_some_and(|rest| {
                rest.split('@').next().is_some_and(|userinfo| userinfo.contains(':'))
                    && rest.contains('@')
            })
    };
    for (name, s) in services(&c) {
        if let Some(env) = s.get("environment").and_then(|e| e.as_mapping()) {
            for (k, v) in env {
                let k = k.as_str().unwrap();
                let v = v.as_str().unwrap_or_default();
                assert!(!looks_secret(v), "{name}: {k} looks like a secret");
                assert!(
                    !k.contains("PASSWORD") || k.ends_with("_FILE"),
                    "{name}: {k} passes a password in the environment"
                );
            }
        }
        assert_eq!(
            s["read_only"].as_bool(),
            Some(true),
            "{name}: read-only root filesystem"
        );
        assert_eq!(
            s["cap_drop"][0].as_str(),
            Some("ALL"),
            "{name}: drops all capabilities"
        );
        assert!(
            s["security_opt"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|o| o.as_str() == Some("no-new-privileges:true")),
            "{name}: no-new-privileges"
        );
        if let Some(user) = s.get("user").and_then(|u| u.as_str()) {
            assert!(
                user != "root" && !user.starts_with("0:") && user != "0",
                "{name} runs as root"
            );
        }
        if let Some(target) = s.get("build").map(|b| &b["target"]) {
            let target = target.as_str().unwrap();
            assert_eq!(target, name, "{name}: its own image stage");
            assert!(s.get("user").is_none(), "{name}: the image's non-root user");
        }
    }
}

#[test]
fn the_images_are_distroless_and_non_root() {
    let dockerfile = read("Dockerfile");
    let mut stage: Option<(String, String)> = None; // (name, base)
    let mut stages = BTreeMap::new();
    for line in dockerfile.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let name = parts.last().unwrap().to_string();
            stage = Some((name.clone(), parts[0].to_owned()));
            stages.insert(name, (parts[0].to_owned(), Vec::<String>::new()));
        } else if let Some((name, _)) = &stage {
            stages.get_mut(name).unwrap().1.push(line.to_owned());
        }
    }
    for image in ["carebill", "tokenizer"] {
        let (base, lines) = stages
            .get(image)
            .unwrap_or_else(|| panic!("no `{image}` stage"));
        assert!(
            base.starts_with("gcr.io/distroless/") && base.ends_with(":nonroot"),
            "{image}: distroless nonroot base, got {base}"
        );
        assert!(
            lines.iter().any(|l| l == "USER nonroot:nonroot"),
            "{image}: USER nonroot"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("RUN ")),
            "{image}: a runtime stage needs no shell, so runs nothing"
        );
        let copies: Vec<&String> = lines.iter().filter(|l| l.starts_with("COPY ")).collect();
        assert_eq!(copies.len(), 1, "{image}: only its binary is copied in");
        assert!(copies[0].ends_with(&format!("/usr/local/bin/{image}")));
    }
}

/// `define NAME = VALUE` lines and `accept` rules of the fabric rule set.
fn fabric_rules() -> BTreeSet<(String, String, String, u16)> {
    let text = read("pci/fabric.nft");
    let mut defines = BTreeMap::new();
    let mut rules = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("define ") {
            let (k, v) = rest.split_once('=').unwrap();
            defines.insert(format!("${}", k.trim()), v.trim().to_owned());
            continue;
        }
        if !line.ends_with(" accept") || line.starts_with("ct state") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &[&str]| -> String {
            let i = words
                .windows(key.len())
                .position(|w| w == key)
                .unwrap_or_else(|| panic!("rule without {key:?}: {line}"));
            words[i + key.len()].trim_matches('"').to_owned()
        };
        let resolve = |v: String| defines.get(&v).cloned().unwrap_or(v);
        let iif = after(&["iifname"]);
        assert_eq!(
            iif,
            after(&["oifname"]),
            "a rule crosses bridges (there is no routing between networks): {line}"
        );
        rules.insert((
            iif,
            resolve(after(&["ip", "saddr"])),
            resolve(after(&["ip", "daddr"])),
            after(&["tcp", "dport"]).parse().unwrap(),
        ));
    }
    rules
}

#[test]
fn the_fabric_rules_allow_exactly_the_topologys_flows() {
    let topo = topology();
    let text = read("pci/fabric.nft");
    assert!(
        text.contains("policy drop;"),
        "the fabric's default must be deny"
    );
    let expected: BTreeSet<(String, String, String, u16)> = topo
        .flows
        .iter()
        .map(|(network, from, to, port)| {
            let bridge = topo.networks[network].3.clone().unwrap();
            let source = topo
                .ranges
                .get(from)
                .and_then(|r| r.get(network))
                .or_else(|| topo.addresses[from].get(network))
                .unwrap()
                .clone();
            (bridge, source, topo.addresses[to][network].clone(), *port)
        })
        .collect();
    assert_eq!(
        fabric_rules(),
        expected,
        "pci/fabric.nft and pci/topology.toml disagree"
    );
    // The internet's range holds its testbed address and none of the services'.
    let range = &topo.ranges["internet"]["edge"];
    assert_eq!(range, "10.89.1.128/25");
    for (host, nets) in &topo.addresses {
        if let Some(a) = nets.get("edge") {
            let last: u8 = a.rsplit('.').next().unwrap().parse().unwrap();
            assert_eq!(
                last >= 128,
                host == "internet",
                "{host}'s edge address {a} and the internet's range"
            );
        }
    }
}

/// Backticked paths in the table rows of a control matrix.
fn matrix_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| ")) {
        for (i, part) in line.split('`').enumerate() {
            let looks_like_path = part.contains('/')
                || [
                    ".rs", ".toml", ".yml", ".md", ".sql", ".nft", ".py", ".conf",
                ]
                .iter()
                .any(|e| part.ends_with(e))
                || part == "Dockerfile";
            if i % 2 == 1 && looks_like_path && !part.contains(' ') {
                out.insert(part.to_owned());
            }
        }
    }
    out
}

/// The paths of a control matrix that do not exist in the repository.
fn missing_paths(text: &str) -> Vec<String> {
    matrix_paths(text)
        .into_iter()
        .filter(|p| !Path::new(&root()).join(p).exists())
        .collect()
}

#[test]
fn every_path_in_the_control_matrix_exists() {
    let text = read("pci/CONTROLS.md");
    let paths = matrix_paths(&text);
    assert!(
        paths.len() >= 30,
        "the matrix names {} paths; the parser is missing them",
        paths.len()
    );
    let missing = missing_paths(&text);
    assert!(
        missing.is_empty(),
        "pci/CONTROLS.md names paths that do not exist: {missing:?}"
    );
    // Every requirement the issue lists has a row.
    for req in [
        "| 1.2 ",
        "| 1.3 ",
        "| 1.4 ",
        "| 3.3 ",
        "| 3.4 ",
        "| 3.5 ",
        "| 3.5.1.1 ",
        "| 3.6 ",
        "| 3.7 ",
        "| 4.2 ",
        "| 6.2 ",
        "| 6.3 ",
        "| 7 ",
        "| 8.3 ",
        "| 8.4 ",
        "| 10.2 ",
        "| 10.3 ",
        "| 10.4 ",
        "| 10.5 ",
        "| 11.4 ",
        "| (a)(1) ",
        "| (b) ",
        "| (c)(1) ",
        "| (d) ",
        "| (e)(1) ",
    ] {
        assert!(text.contains(req), "pci/CONTROLS.md has no row {req:?}");
    }
}

#[test]
fn the_path_check_reports_a_row_whose_file_moved() {
    // The check above can fail: a row naming a file that is not there is reported, the ones
    // that are there are not, and prose in backticks is not taken for a path.
    let text = "| 7 | roles | `src/auth.rs`, `src/moved_away.rs` | `tests/authz_matrix.rs` (`cargo test`) |\n\
                not a row: `src/also_missing.rs`\n";
    assert_eq!(missing_paths(text), vec!["src/moved_away.rs".to_owned()]);
}
