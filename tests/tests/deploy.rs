//! deploy/: the Kubernetes manifests, the systemd unit and the Dockerfile, checked offline
//! with the validators `cargo xtask setup` installs (pinned, in their own venv) and against the
//! real agent binary. No root needed; nothing is deployed or built into an image here (no
//! cluster, no Docker engine on these machines).
//!
//! - kubernetes-validate `--strict` (unknown fields are errors) on every manifest, against
//!   the pinned Kubernetes schema versions; kustomization.yaml lists exactly those manifests.
//! - The DaemonSet and the unit run the agent the way it is tested: the three capabilities,
//!   bpffs and the cgroup v2 root where the flags point, probes and Prometheus annotations on
//!   the metrics address. Their command lines, with the shipped config, are run through the
//!   real `limiter` with no capabilities: it must get past its flags and the config file (exit
//!   2 is a usage error) and stop at the capability check (exit 1), touching nothing.
//! - `systemd-analyze verify` (no warnings) and `systemd-analyze security --offline` on the unit.
//! - hadolint on the Dockerfile; the builder installs its toolchain with `cargo xtask setup
//!   --build-only` (the same code and package list CI uses, not a copy), and the agent links
//!   only libraries Debian 12 slim has.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use limiter_tests::{agent::limiter_bin, names, process::run_bounded};
use serde_json::Value;

/// The Kubernetes versions the manifests are validated against: the oldest they support
/// (securityContext.appArmorProfile is 1.30) and the newest the pinned kubernetes-validate
/// knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Where `cargo xtask setup` puts the validators (xtask/src/toolchain.rs `VALIDATORS_VENV`);
/// `LIMITER_VALIDATORS_BIN` overrides it.
const VALIDATORS_BIN: &str = "/opt/limiter-validators/bin";
const TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's capabilities, as Kubernetes names them (without `CAP_`).
const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
/// The DaemonSet's: SYS_ADMIN on top, for entering pods' network namespaces (Kubernetes mode).
const DAEMONSET_CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"];
const METRICS_PORT: u64 = 9464;
const PIN_DIR: &str = "/sys/fs/bpf/limiter";
const CONFIG_FILE: &str = "/etc/limiter/limiter.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn validator(name: &str) -> PathBuf {
    let dir = std::env::var_os("LIMITER_VALIDATORS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VALIDATORS_BIN));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: `cargo xtask setup` installs the deploy validators",
        path.display()
    );
    path
}

fn run(mut cmd: Command) -> (Output, String) {
    cmd.current_dir(root());
    let description = format!("{cmd:?}");
    let out = run_bounded(cmd, TIMEOUT);
    let text = format!(
        "{description} ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The YAML documents of a file, as JSON (PyYAML from the validators' venv).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let mut cmd = Command::new(validator("python"));
    cmd.args([
        "-c",
        "import json, sys, yaml\njson.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
    ])
    .arg(path);
    let (out, text) = run(cmd);
    assert!(out.status.success(), "{text}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Every manifest in deploy/kubernetes (all YAML files but the kustomization).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

/// The one document of `kind` across the manifests.
fn resource(kind: &str) -> Value {
    let mut found: Vec<Value> = manifests()
        .iter()
        .flat_map(|p| yaml_documents(p))
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found.remove(0)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v}"))
                .to_string()
        })
        .collect()
}

/// A flag's value in an argument list (`--flag VALUE` or `--flag=VALUE`), every occurrence.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if arg == flag {
            values.push(args.get(i + 1).cloned().unwrap_or_default());
        } else if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
            values.push(value.to_string());
        }
    }
    values
}

/// A temporary file, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("{}.yaml", names::unique(what, names::next_id())));
        fs::write(&path, text).expect("writing a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs the real agent with `args` (after `limiter`), `--config FILE` pointing at `config`,
/// and no capabilities at all, so that it stops at its capability check, before it touches the
/// kernel. Exit 1 naming the capabilities means the flags and the config file were accepted
/// (bad flags or a bad file exit 2 first).
fn agent_accepts(args: &[String], config: &str) -> Result<(), String> {
    let file = TempFile::new("deploy-cfg", config);
    let socket = std::env::temp_dir().join(format!(
        "{}.sock",
        names::unique("deploy", names::next_id())
    ));
    let mut args: Vec<String> = args.to_vec();
    for i in 0..args.len() {
        if args[i] == "--config" && i + 1 < args.len() {
            args[i + 1] = file.0.display().to_string();
        }
    }
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        // Root has every capability: drop them all, for good (bounding set too).
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--",
        ]);
        cmd.arg(limiter_bin());
        cmd
    } else {
        Command::new(limiter_bin())
    };
    cmd.args(&args)
        .arg("--control-socket")
        .arg(&socket)
        .env_remove("LIMITER_CONTROL_SOCKET");
    let (out, text) = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(1)
        && stderr.starts_with("limiter: error:")
        && stderr.contains("CAP_BPF")
    {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate_strict() {
    let tool = validator("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        for file in manifests() {
            let mut cmd = Command::new(&tool);
            cmd.args(["--strict", "--kubernetes-version", version])
                .arg(&file);
            let (out, text) = run(cmd);
            // A kind it has no schema for is only a warning, with exit 0: not a pass.
            assert!(
                out.status.success()
                    && text.contains("passed")
                    && !text.contains("WARN")
                    && !text.contains("ERROR"),
                "{} against Kubernetes {version}:\n{text}",
                file.display()
            );
        }
    }
}

#[test]
fn kubernetes_validate_catches_a_misspelled_field() {
    // The check above is only worth something if --strict rejects what kubectl would.
    let daemonset = read(&deploy("kubernetes/daemonset.yaml"));
    assert!(daemonset.contains("hostNetwork: true"));
    let bad = TempFile::new(
        "deploy-bad",
        &daemonset.replace("hostNetwork: true", "hostNetwrk: true"),
    );
    let mut cmd = Command::new(validator("kubernetes-validate"));
    cmd.args(["--strict", "--kubernetes-version", KUBERNETES_VERSIONS[0]])
        .arg(&bad.0);
    let (out, text) = run(cmd);
    assert!(
        !out.status.success() && text.contains("hostNetwrk"),
        "{text}"
    );
}

#[test]
fn kustomization_lists_every_manifest_in_one_namespace() {
    let kustomization = yaml_documents(&deploy("kubernetes/kustomization.yaml")).remove(0);
    assert_eq!(kustomization["kind"], "Kustomization", "{kustomization}");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs files");

    let namespace = kustomization["namespace"].as_str().expect("namespace");
    assert_eq!(resource("Namespace")["metadata"]["name"], namespace);
    for kind in ["ConfigMap", "DaemonSet"] {
        assert_eq!(
            resource(kind)["metadata"]["namespace"],
            namespace,
            "{kind} is not in {namespace}"
        );
    }
    // `images:` rewrites the image every container of the DaemonSet uses.
    let image = kustomization["images"][0]["name"].as_str().expect("images");
    let spec = &resource("DaemonSet")["spec"]["template"]["spec"];
    for container in ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().expect("containers").iter())
    {
        let used = container["image"].as_str().expect("image");
        assert_eq!(
            used.split(':').next(),
            Some(image),
            "{} uses {used}",
            container["name"]
        );
    }
}

#[test]
fn daemonset_runs_the_agent_as_it_is_tested() {
    let daemonset = resource("DaemonSet");
    let template = &daemonset["spec"]["template"];
    let spec = &template["spec"];
    assert_eq!(spec["hostNetwork"], true, "the agent enforces in its netns");

    // Rolling update: one agent per node at a time, adopting the pins the last one left.
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 0, "{rolling}");
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!((5..=60).contains(&grace), "grace period {grace}");

    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    assert!(
        agent.get("command").is_none(),
        "the image's entrypoint is the agent; args only"
    );
    let args = strings(&agent["args"]);
    assert_eq!(args[0], "run", "{args:?}");

    // Least privilege: exactly the three capabilities, nothing privileged.
    let security = &agent["securityContext"];
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        DAEMONSET_CAPABILITIES
    );
    assert_ne!(security["privileged"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);

    // Only the init container that mounts bpffs is privileged, and only it propagates
    // mounts back to the host.
    for init in spec["initContainers"].as_array().expect("initContainers") {
        assert_eq!(init["securityContext"]["privileged"], true, "{init}");
        let script = strings(&init["command"]).join(" ");
        assert!(script.contains("mount -t bpf bpf /sys/fs/bpf"), "{script}");
    }

    // Volumes: where the flags point.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let host_path = |name: &str| -> String {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
            .to_string()
    };
    let mount = |container: &Value, path: &str| -> Value {
        container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{} mounts nothing at {path}", container["name"]))
    };
    assert_eq!(flag_values(&args, "--pin-dir"), [PIN_DIR]);
    assert!(args.contains(&"--keep-pinned".to_string()), "{args:?}");
    let bpffs = mount(agent, "/sys/fs/bpf");
    assert_eq!(host_path(bpffs["name"].as_str().unwrap()), "/sys/fs/bpf");
    assert_eq!(bpffs["mountPropagation"], "HostToContainer");
    for init in spec["initContainers"].as_array().unwrap() {
        assert_eq!(
            mount(init, "/sys/fs/bpf")["mountPropagation"],
            "Bidirectional"
        );
    }
    let cgroup = flag_values(&args, "--cgroup");
    assert_eq!(cgroup.len(), 1, "{args:?}");
    let cgroup_mount = mount(agent, &cgroup[0]);
    assert_eq!(
        host_path(cgroup_mount["name"].as_str().unwrap()),
        "/sys/fs/cgroup"
    );
    assert_eq!(cgroup_mount["readOnly"], true);
    // The control socket's directory is writable (the root filesystem is not).
    mount(agent, "/run/limiter");

    // The config file is the ConfigMap's key, mounted where --config points.
    assert_eq!(flag_values(&args, "--config"), [CONFIG_FILE]);
    let config_mount = mount(agent, "/etc/limiter");
    let config_volume = volumes
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .expect("config volume");
    let configmap = resource("ConfigMap");
    assert_eq!(
        config_volume["configMap"]["name"],
        configmap["metadata"]["name"]
    );
    let config = configmap["data"]["limiter.yaml"]
        .as_str()
        .expect("the ConfigMap has limiter.yaml");

    // Interfaces: the default route's, metrics on every address (hostNetwork).
    assert_eq!(flag_values(&args, "--iface"), ["default-route"]);
    assert_eq!(
        flag_values(&args, "--metrics-addr"),
        [format!("0.0.0.0:{METRICS_PORT}")]
    );
    let port = &agent["ports"][0];
    assert_eq!(
        (port["containerPort"].as_u64(), port["hostPort"].as_u64()),
        (Some(METRICS_PORT), Some(METRICS_PORT))
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], port["name"], "{probe}");
    }
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        METRICS_PORT.to_string().as_str()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    for container in containers
        .iter()
        .chain(spec["initContainers"].as_array().unwrap())
    {
        for kind in ["requests", "limits"] {
            let r = &container["resources"][kind];
            assert!(
                r["cpu"].is_string() && r["memory"].is_string(),
                "{}: resources.{kind} {r}",
                container["name"]
            );
        }
    }

    // Kubernetes mode: the node's name from the downward API, the service account of
    // rbac.yaml, hostPID and the runtime's netns mounts to find pods' namespaces.
    assert!(args.contains(&"--kubernetes".to_string()), "{args:?}");
    assert_eq!(flag_values(&args, "--node-name"), ["$(NODE_NAME)"]);
    let node_name = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME in env");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        spec["serviceAccountName"],
        resource("ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(spec["automountServiceAccountToken"], true);
    assert_eq!(spec["hostPID"], true);
    let netns = mount(agent, "/run/netns");
    assert_eq!(host_path(netns["name"].as_str().unwrap()), "/run/netns");
    assert_eq!(netns["mountPropagation"], "HostToContainer");
    assert_eq!(netns["readOnly"], true);

    // The real agent takes these args with this config file.
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("$(NODE_NAME)", "node-a"))
        .collect();
    agent_accepts(&args, config).unwrap_or_else(|e| panic!("the DaemonSet's args: {e}"));
}

/// Least privilege with the API server: read Pods and policies, write Events, nothing else; the
/// binding names the DaemonSet's service account.
#[test]
fn rbac_grants_only_what_kubernetes_mode_uses() {
    let role = resource("ClusterRole");
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["verbs"]),
            )
        })
        .collect();
    let owned = |g: &str, r: &str, v: &[&str]| {
        (
            vec![g.to_string()],
            vec![r.to_string()],
            v.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        rules,
        [
            owned("", "pods", &["get", "list", "watch"]),
            owned(
                "limiter.dev",
                "connectionlimitpolicies",
                &["get", "list", "watch"]
            ),
            owned(
                "gateway.networking.k8s.io",
                "gateways",
                &["get", "list", "watch"]
            ),
            owned("", "services", &["get", "list", "watch"]),
            owned("events.k8s.io", "events", &["create", "patch"]),
        ]
    );
    let binding = resource("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let account = resource("ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        account["metadata"]["namespace"]
    );
}

/// The CRD's OpenAPI schema, checked offline as the API server's strict field validation would:
/// every sample policy passes; a limit of 0, a port out of range, a wrong action and an
/// unknown field are each rejected.
#[test]
fn crd_schema_accepts_the_samples_and_rejects_bad_policies() {
    let crd = resource("CustomResourceDefinition");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let samples: Vec<PathBuf> = fs::read_dir(deploy("kubernetes/samples"))
        .expect("deploy/kubernetes/samples")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(samples.len(), 3, "{samples:?}");
    for sample in &samples {
        let policy = yaml_documents(sample).remove(0);
        assert_eq!(
            policy["kind"],
            crd["spec"]["names"]["kind"],
            "{}",
            sample.display()
        );
        schema_check(schema, &policy).unwrap_or_else(|e| panic!("{}: {e}", sample.display()));
    }
    let good = samples
        .iter()
        .map(|s| yaml_documents(s).remove(0))
        .find(|p| p["spec"]["listeners"][0]["port"].is_number())
        .expect("a sample with a listener's port");
    let with = |pointer: &str, value: Value| {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).expect(pointer) = value;
        bad
    };
    let mut unknown = good.clone();
    unknown["spec"]["listeners"][0]["maxActiveConnection"] = Value::from(5);
    for (what, bad) in [
        (
            "a limit of 0",
            with("/spec/listeners/0/maxActiveConnections", Value::from(0)),
        ),
        (
            "port 70000",
            with("/spec/listeners/0/port", Value::from(70000)),
        ),
        ("port 0", with("/spec/listeners/0/port", Value::from(0))),
        (
            "action close",
            with("/spec/listeners/0/action", Value::from("close")),
        ),
        ("probes 0", {
            let mut bad = good.clone();
            bad["spec"]["keepalive"] = serde_json::json!([
                {"destinations": "10.0.0.0/8", "tcpKeepalive": {"probes": 0}}
            ]);
            bad
        }),
        ("an unknown field", unknown),
    ] {
        assert!(
            schema_check(schema, &bad).is_err(),
            "{what} passed the CRD schema"
        );
    }
}

/// Validates `object` against a CRD's structural schema with jsonschema, as the API server's
/// strict field validation does: `nullable` allows null, and an object with `properties`
/// allows no other field.
fn schema_check(schema: &Value, object: &Value) -> Result<(), String> {
    let script = r#"
import json, sys, jsonschema
schema, obj = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
def strict(s):
    if isinstance(s, dict):
        if s.get("nullable") and "type" in s:
            s["type"] = [s["type"], "null"]
        if s.get("type") == "object" and "properties" in s:
            s.setdefault("additionalProperties", False)
        for v in list(s.values()):
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
    return s
schema = strict(schema)
# apiVersion, kind and metadata are the API server's business, not the schema's.
schema.setdefault("properties", {}).update({"apiVersion": {}, "kind": {}, "metadata": {}})
try:
    jsonschema.validate(obj, schema)
except jsonschema.ValidationError as e:
    print(e.message)
    sys.exit(1)
"#;
    let schema_file = TempFile::new("crd-schema", &schema.to_string());
    let object_file = TempFile::new("crd-object", &object.to_string());
    let mut cmd = Command::new(validator("python"));
    cmd.args(["-c", script])
        .arg(&schema_file.0)
        .arg(&object_file.0);
    let (out, text) = run(cmd);
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn agent_check_tells_bad_args_from_good() {
    let good = ["run", "--iface", "eth0", "--config", CONFIG_FILE].map(String::from);
    let config = "listeners:\n  - listener: \"8000\"\n    connection:\n      connectionLimit:\n        value: 5\n";
    agent_accepts(&good, config).unwrap();
    let bad_flag = ["run", "--iface", "eth0", "--pin-dri", PIN_DIR].map(String::from);
    assert!(agent_accepts(&bad_flag, config).is_err());
    assert!(agent_accepts(&good, &config.replace("value", "valeu")).is_err());
}

/// `Key=Value` lines of a unit's section (continuation lines joined).
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut entries = Vec::new();
    let mut pending = String::new();
    for line in unit.lines() {
        let line = line.trim();
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line.trim_end_matches('\\').trim());
        if line.ends_with('\\') {
            continue;
        }
        let full = std::mem::take(&mut pending);
        if full.starts_with('#') || full.is_empty() {
            continue;
        }
        if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section
            && let Some((key, value)) = full.split_once('=')
        {
            entries.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    entries
}

/// A directory tree standing in for a host's root: systemd's own units, /bin/kill, and an
/// executable at the unit's ExecStart path. `systemd-analyze --root` checks the unit there,
/// so nothing is installed on this machine.
struct UnitRoot(PathBuf);

impl UnitRoot {
    fn new(unit: &str) -> UnitRoot {
        let dir = std::env::temp_dir().join(names::unique("unit-root", names::next_id()));
        let root = UnitRoot(dir);
        for sub in [
            "etc/systemd/system",
            "usr/lib/systemd",
            "usr/local/bin",
            "bin",
        ] {
            fs::create_dir_all(root.0.join(sub)).expect("creating the unit root");
        }
        let mut copy = Command::new("cp");
        copy.args(["-r", "/usr/lib/systemd/system"])
            .arg(root.0.join("usr/lib/systemd/"));
        let (out, text) = run(copy);
        assert!(out.status.success(), "{text}");
        fs::copy("/bin/kill", root.0.join("bin/kill"))
            .expect("/bin/kill (procps) is needed for the unit's ExecReload");
        let agent = root.0.join("usr/local/bin/limiter");
        fs::write(&agent, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fs::write(root.0.join("etc/systemd/system/limiter.service"), unit).unwrap();
        root
    }
}

impl Drop for UnitRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn systemd_analyze(root: &UnitRoot, args: &[&str]) -> (Output, String) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(args)
        .arg(format!("--root={}", root.0.display()))
        .arg("limiter.service");
    run(cmd)
}

#[test]
fn systemd_unit_verifies_cleanly() {
    let unit = read(&deploy("systemd/limiter.service"));
    let root = UnitRoot::new(&unit);
    // verify exits 0 on unknown keys and bad values; it only warns. Any output fails.
    let (out, text) = systemd_analyze(&root, &["verify", "--man=no"]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{text}"
    );
    // And it does warn: a misspelled key is caught.
    let bad = UnitRoot::new(&unit.replace("NoNewPrivileges=", "NoNewPrivilege="));
    let (_, text) = systemd_analyze(&bad, &["verify", "--man=no"]);
    assert!(text.contains("NoNewPrivilege"), "{text}");

    // Exposure (0 safest, 10 worst) at most 4.5: "OK" in systemd's words.
    let (out, text) = systemd_analyze(&root, &["security", "--offline=true", "--threshold=45"]);
    assert!(out.status.success(), "{text}");
}

#[test]
fn systemd_unit_runs_the_agent_as_it_is_tested() {
    let unit = read(&deploy("systemd/limiter.service"));
    let service = unit_section(&unit, "Service");
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let caps = CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(get("AmbientCapabilities"), [caps.as_str()]);
    assert_eq!(get("CapabilityBoundingSet"), [caps.as_str()]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    // The control socket's directory, /run/limiter, is the one place it writes besides bpffs.
    assert_eq!(get("RuntimeDirectory"), ["limiter"]);
    assert!(
        get("ReadWritePaths")
            .iter()
            .any(|p| p.split_whitespace().any(|p| PIN_DIR.starts_with(p))),
        "the pin directory must be writable: {service:?}"
    );

    let exec = get("ExecStart");
    assert_eq!(exec.len(), 1, "{service:?}");
    let words: Vec<String> = exec[0].split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "/usr/local/bin/limiter");
    let args = &words[1..];
    assert_eq!(flag_values(args, "--config"), [CONFIG_FILE]);
    assert_eq!(flag_values(args, "--pin-dir"), [PIN_DIR]);
    // The file it is installed with (the unit's header says so): each example works.
    for example in [
        "envoy-gateway-connection-limit.yaml",
        "gloo-gateway-connection-limit.yaml",
        "gloo-mesh-tcp-connection-policy.yaml",
    ] {
        let config = read(&root().join("examples").join(example));
        agent_accepts(args, &config).unwrap_or_else(|e| panic!("ExecStart with {example}: {e}"));
    }
}

#[test]
fn dockerfile_lints_clean() {
    let mut cmd = Command::new(validator("hadolint"));
    cmd.args(["--no-color", "--failure-threshold", "style"])
        .arg(deploy("Dockerfile"));
    let (out, text) = run(cmd);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint: {text}"
    );
}

#[test]
fn dockerfile_builds_with_xtask_setup_and_runs_the_agent() {
    let dockerfile = read(&deploy("Dockerfile"));
    // Instructions, continuation lines joined, comments dropped.
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let from: Vec<&String> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert!(from[0].ends_with(" AS builder"), "{}", from[0]);
    assert!(
        from[1].contains("debian:12-slim") || from[1].contains("distroless/cc-debian12"),
        "runtime stage: {}",
        from[1]
    );
    let runs: Vec<&String> = instructions
        .iter()
        .filter(|l| l.starts_with("RUN "))
        .collect();
    // One source of truth for the toolchain: the builder runs setup, and installs nothing
    // itself.
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo xtask setup --build-only")),
        "{runs:?}"
    );
    for run in &runs {
        assert!(
            !run.contains("apt-get")
                && !run.contains("apt install")
                && !run.contains("cargo install"),
            "the Dockerfile installs something itself (xtask setup is the one recipe): {run}"
        );
    }
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked -p limiter-user")),
        "{runs:?}"
    );
    assert!(
        instructions
            .iter()
            .any(|l| l == "ENTRYPOINT [\"/usr/local/bin/limiter\"]"),
        "the agent is the entrypoint"
    );
    assert!(
        instructions.iter().any(
            |l| l.starts_with("COPY --from=builder ") && l.ends_with(" /usr/local/bin/limiter")
        ),
        "{instructions:?}"
    );
}

#[test]
fn agent_links_only_what_debian_12_slim_has() {
    let mut cmd = Command::new("readelf");
    cmd.arg("--dynamic").arg(limiter_bin());
    let (out, text) = run(cmd);
    assert!(out.status.success(), "{text}");
    let needed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_string()))
        .collect();
    assert!(!needed.is_empty(), "{text}");
    // glibc and libgcc (libc6, libgcc-s1: in every Debian 12 image).
    let base = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    for lib in &needed {
        assert!(
            base.contains(&lib.as_str()),
            "the agent needs {lib}, which Debian 12 slim does not have: add it to the image"
        );
    }
}

#[test]
fn deploy_docs_name_files_that_exist() {
    // The install and build instructions in the README and in the files' own comments.
    for (file, at_least) in [
        ("README.md", 4),
        ("systemd/limiter.service", 2),
        ("Dockerfile", 1),
        ("kubernetes/daemonset.yaml", 1),
    ] {
        let text = read(&deploy(file));
        let mut named = 0;
        for word in text.split(|c: char| c.is_whitespace() || "`()[]<>\"',".contains(c)) {
            let path = word.trim_end_matches(['.', ':', ';']);
            if ["deploy/", "examples/", "docs/", "xtask/"]
                .iter()
                .any(|dir| path.starts_with(dir))
            {
                named += 1;
                assert!(
                    root().join(path).exists(),
                    "deploy/{file} names {path}, which does not exist"
                );
            }
        }
        assert!(named >= at_least, "deploy/{file} names only {named} files");
    }
}

/// deploy/monitoring's alerting rules pass their promtool unit tests (each alert fires when it
/// should and not otherwise), and the PrometheusRule holds exactly the plain file's groups.
#[test]
fn monitoring_rules_pass_promtool_and_the_prometheus_rule_holds_the_same() {
    let dir = deploy("monitoring");
    // (`run` works from the repository's root; the test file names its rules relative to
    // itself.)
    let mut check = Command::new("promtool");
    check.args(["check", "rules", "deploy/monitoring/limiter-rules.yaml"]);
    let (out, text) = run(check);
    assert!(out.status.success(), "promtool check rules: {text}");
    let mut test = Command::new("promtool");
    test.args(["test", "rules", "deploy/monitoring/limiter-rules.test.yaml"]);
    let (out, text) = run(test);
    assert!(out.status.success(), "promtool test rules: {text}");
    assert!(text.contains("SUCCESS"), "{text}");

    let plain = yaml_documents(&dir.join("limiter-rules.yaml")).remove(0);
    let operator = yaml_documents(&dir.join("prometheusrule.yaml"));
    let rule = operator
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule in prometheusrule.yaml");
    assert_eq!(
        rule["spec"]["groups"], plain["groups"],
        "prometheusrule.yaml's groups differ from limiter-rules.yaml's"
    );
    let monitor = operator
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("a PodMonitor in prometheusrule.yaml");
    let daemonset = resource("DaemonSet");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"], daemonset["spec"]["selector"]["matchLabels"],
        "the PodMonitor selects the agent's pods"
    );
}
