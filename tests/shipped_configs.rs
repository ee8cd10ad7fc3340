//! Every configuration shipped in `config/` and `deploy/` passes `check-config` as shipped,
//! given exactly the environment variables its deployment provides: the ones its comments
//! list (the example, the systemd unit's env file, the README's start command), the compose
//! file's `environment:`, or the Kubernetes Secret template and Deployment. The process runs
//! with a cleared environment, so a `${VAR}` nobody provides fails the test. The key files
//! each deployment installs are the ones its configuration reads, by name.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `NAME=…` and `NAME=...` tokens of `text`: how the comments list the variables to set.
fn assigned_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '#')
        .filter_map(|word| word.split_once('='))
        .filter(|(name, value)| {
            is_var_name(name) && (value.starts_with('…') || value.starts_with("..."))
        })
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn is_var_name(s: &str) -> bool {
    s.len() > 1
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The leading comment block of a file.
fn header(text: &str) -> String {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `gstgate.toml: |` block of a ConfigMap, unindented.
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "gstgate.toml: |");
    lines.next().expect("a gstgate.toml: | block");
    let block: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    block
        .iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The keys of the Secret template's `stringData`.
fn secret_keys(yaml: &str) -> BTreeSet<String> {
    yaml.lines()
        .skip_while(|l| l.trim() != "stringData:")
        .skip(1)
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_owned()))
        .filter(|k| is_var_name(k))
        .collect()
}

/// The `- name: X` entries of a container's `env:` lists.
fn env_names(yaml: &str) -> BTreeSet<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(str::trim)
        .filter(|n| is_var_name(n))
        .map(str::to_owned)
        .collect()
}

/// The `environment:` of the compose file's `x-gstgate` block, as (name, literal value).
fn compose_environment(yaml: &str) -> Vec<(String, String)> {
    let block: Vec<&str> = yaml
        .lines()
        .skip_while(|l| !l.starts_with("x-gstgate:"))
        .skip(1)
        .take_while(|l| !l.starts_with(|c: char| c.is_ascii_alphabetic()))
        .skip_while(|l| l.trim() != "environment:")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    block
        .iter()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| is_var_name(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A value for `name` that the configuration accepts where such a variable is used.
fn value_for(name: &str) -> String {
    if name.ends_with("STORE_KEY") {
        // Base64 of 32 bytes.
        "c2hpcHBlZC1jb25maWctdGVzdC1rZXktMzItYnl0ZXM=".into()
    } else if name.ends_with("REDIS_URL") {
        "rediss://gstgate:pw@redis.example.internal:6379/0".into()
    } else if name.ends_with("BASE_URL") {
        "https://gsp.example.com/gus/irp/nic".into()
    } else if name.ends_with("SHA256") {
        "ab".repeat(32)
    } else if name.ends_with("WEBHOOK") {
        // Empty switches the webhook off: an optional feature needs no value.
        String::new()
    } else {
        format!("value-of-{}", name.to_ascii_lowercase())
    }
}

/// Writes an RSA public key at every absolute `public_key` of `toml`, under `root`; returns
/// those paths. The key's content, not its file name, decides how it is read, so one PEM
/// serves the `.pem` and `.cer` names alike.
fn install_keys(toml_text: &str, root: &Path) -> BTreeSet<PathBuf> {
    let value: toml::Value = toml::from_str(toml_text).expect("TOML");
    let private = std::fs::read_to_string(common::sim_key_file()).unwrap();
    let pem = gstgate::crypto::KeyPair::from_pkcs8_pem(&private)
        .unwrap()
        .public_key()
        .to_pem()
        .unwrap();
    let mut paths = BTreeSet::new();
    for upstream in value["upstream"].as_array().into_iter().flatten() {
        let path = PathBuf::from(upstream["public_key"].as_str().unwrap());
        if let Ok(rest) = path.strip_prefix("/") {
            let file = root.join(rest);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &pem).unwrap();
            paths.insert(path);
        }
    }
    paths
}

/// Writes a secret file (mode 0600, a value of the right shape for its name) at every
/// absolute `*_file` setting of `toml`, under `root`; returns the files' names.
fn install_secret_files(toml_text: &str, root: &Path) -> BTreeSet<String> {
    use std::os::unix::fs::PermissionsExt as _;
    // `files`: inside `headers_files`, whose every value is a file name.
    fn walk(value: &toml::Value, files: bool, found: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match v.as_str() {
                        Some(path) if (files || k.ends_with("_file")) && path.starts_with('/') => {
                            found.push(path.to_owned())
                        }
                        _ => walk(v, k == "headers_files", found),
                    }
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, false, found)),
            _ => {}
        }
    }
    let value: toml::Value = toml::from_str(toml_text).expect("TOML");
    let mut found = Vec::new();
    walk(&value, false, &mut found);
    let mut names = BTreeSet::new();
    for path in found {
        // Only secret files: the CA and key files are installed by their own helpers.
        if !path.starts_with("/run/secrets/") {
            continue;
        }
        let file = root.join(path.trim_start_matches('/'));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("{}\n", value_for(&name))).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        names.insert(name);
    }
    names
}

/// Runs `check-config --root` on `toml` with a cleared environment holding only `vars`;
/// panics with the output unless it passes without warnings.
fn passes(label: &str, toml_text: &str, cwd: &Path, vars: &[(String, String)]) -> String {
    let root = tempfile::tempdir().unwrap();
    install_keys(toml_text, root.path());
    install_secret_files(toml_text, root.path());
    let file = root.path().join("checked.toml");
    std::fs::write(&file, toml_text).unwrap();
    let out = Command::new(BIN)
        .current_dir(cwd)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["check-config", "--config"])
        .arg(&file)
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{label}: check-config failed:\n{text}"
    );
    assert!(!text.contains("warning:"), "{label}: {text}");
    text
}

fn with_values(names: &BTreeSet<String>) -> Vec<(String, String)> {
    names.iter().map(|n| (n.clone(), value_for(n))).collect()
}

/// The file names of `paths`.
fn file_names(paths: &BTreeSet<PathBuf>) -> BTreeSet<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_demo_passes_with_no_variables() {
    let demo = read("config/demo.toml");
    assert!(assigned_names(&header(&demo)).is_empty());
    passes("config/demo.toml", &demo, &repo(), &[]);
}

#[test]
fn the_production_example_passes_with_the_variables_its_comment_lists() {
    let example = read("config/example-gsp.toml");
    let listed = assigned_names(&header(&example));
    assert!(listed.contains("GSTGATE_ADMIN_TOKEN"), "{listed:?}");
    passes(
        "config/example-gsp.toml",
        &example,
        &repo(),
        &with_values(&listed),
    );
    // The webhook, off above, can be on with the same file.
    let mut vars = with_values(&listed);
    for (k, v) in &mut vars {
        if k == "GSTGATE_ALERT_WEBHOOK" {
            *v = "https://alerts.example.com/hooks/gstgate".into();
        }
    }
    passes(
        "config/example-gsp.toml (webhook on)",
        &example,
        &repo(),
        &vars,
    );

    // The README's start command for the same file lists the same variables.
    let readme = read("README.md");
    let start = readme
        .lines()
        .position(|l| l.contains("gstgate serve --config /etc/gstgate/gstgate.toml"))
        .expect("the README's start command");
    let lines: Vec<&str> = readme.lines().collect();
    let first = (0..start)
        .rev()
        .take_while(|&i| lines[i].trim_end().ends_with('\\'))
        .last()
        .unwrap_or(start);
    let readme_vars = assigned_names(&lines[first..=start].join("\n"));
    assert_eq!(readme_vars, listed, "README.md's start command");
}

#[test]
fn the_systemd_unit_provides_the_example_s_variables_and_keys() {
    let unit = read("deploy/systemd/gstgate.service");
    assert!(
        unit.contains("config/example-gsp.toml /etc/gstgate/gstgate.toml"),
        "the unit installs the example"
    );
    let example = read("config/example-gsp.toml");
    let env_file = assigned_names(&header(&unit));
    passes(
        "deploy/systemd with config/example-gsp.toml",
        &example,
        &repo(),
        &with_values(&env_file),
    );
    // The keys it installs are the ones the example reads.
    let installed: BTreeSet<String> = header(&unit)
        .lines()
        .filter(|l| l.contains("install ") && l.contains(" /etc/gstgate/keys/"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "/etc/gstgate/keys/")?;
            Some(words[at - 1].rsplit('/').next()?.to_owned())
        })
        .collect();
    let read_keys = file_names(&install_keys(&example, tempfile::tempdir().unwrap().path()));
    assert_eq!(
        installed, read_keys,
        "keys installed by the unit vs read by the config"
    );
}

#[test]
fn the_compose_config_passes_with_the_compose_environment() {
    let compose = read("deploy/docker-compose.yml");
    let vars: Vec<(String, String)> = compose_environment(&compose)
        .into_iter()
        .map(|(k, v)| {
            let v = if v.contains("${") { value_for(&k) } else { v };
            (k, v)
        })
        .collect();
    assert!(
        vars.iter().any(|(k, _)| k == "GSTGATE_STORE_KEY"),
        "{vars:?}"
    );
    passes(
        "deploy/compose/gstgate.toml",
        &read("deploy/compose/gstgate.toml"),
        &repo(),
        &vars,
    );
}

/// The variables the Kubernetes pod has: the Secret's keys and the Deployment's `env`.
fn kubernetes_vars(deployment: &str) -> BTreeSet<String> {
    let mut vars = secret_keys(&read("deploy/kubernetes/secret.template.yaml"));
    vars.extend(env_names(deployment));
    vars
}

/// The key names the `gstgate-nic-keys` ConfigMap is created with (`--from-file=NAME=…`).
fn nic_key_names(text: &str) -> BTreeSet<String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("--from-file="))
        .filter_map(|w| w.split_once('=').map(|(name, _)| name.to_owned()))
        .filter(|name| name != "ca.pem")
        .collect()
}

#[test]
fn the_kubernetes_configs_pass_with_the_secret_and_deployment() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let base = configmap_toml(&read("deploy/kubernetes/configmap.yaml"));
    let vars = kubernetes_vars(&deployment);
    passes(
        "deploy/kubernetes/configmap.yaml",
        &base,
        &repo(),
        &with_values(&vars),
    );
    let overlay = configmap_toml(&read("deploy/kubernetes-redis/configmap-patch.yaml"));
    let mut overlay_vars = vars.clone();
    overlay_vars.extend(env_names(&read(
        "deploy/kubernetes-redis/deployment-patch.yaml",
    )));
    passes(
        "deploy/kubernetes-redis/configmap-patch.yaml",
        &overlay,
        &repo(),
        &with_values(&overlay_vars),
    );

    // Every API, in both.
    for (label, text) in [("base", &base), ("overlay", &overlay)] {
        for api in ["einvoice", "ewaybill", "gstn"] {
            assert!(
                text.contains(&format!("api = \"{api}\"")),
                "{label} lacks {api}"
            );
        }
    }
    // The overlay is the base with another [store]: the rest kept in step.
    let without_store = |t: &str| -> String {
        let mut keep = true;
        t.lines()
            .filter(|l| {
                if l.starts_with('[') {
                    keep = l.trim() != "[store]";
                }
                keep
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_store(&base),
        without_store(&overlay),
        "the overlay's ConfigMap differs from the base's outside [store]"
    );
    // The password files the config reads are keys of the Secret the Deployment mounts.
    let files = install_secret_files(&base, tempfile::tempdir().unwrap().path());
    assert!(!files.is_empty(), "the base config reads no secret file");
    let secret = secret_keys(&read("deploy/kubernetes/secret.template.yaml"));
    assert!(files.is_subset(&secret), "{files:?} not all in {secret:?}");
    assert!(
        deployment.contains("secretName: gstgate-secrets")
            && deployment.contains("mountPath: /run/secrets/gstgate")
            && deployment.contains("defaultMode: 0440"),
        "deployment.yaml mounts the Secret's files, readable by gstgate's group only"
    );

    // The key ConfigMap the docs create holds the files the config reads.
    let read_keys = file_names(&install_keys(&base, tempfile::tempdir().unwrap().path()));
    assert_eq!(
        nic_key_names(&deployment),
        read_keys,
        "deployment.yaml's kubectl line"
    );
    assert_eq!(
        nic_key_names(&read("deploy/README.md")),
        read_keys,
        "deploy/README.md's kubectl lines"
    );
}

/// Each shipped configuration is one of the above: a new one must be added here.
#[test]
fn every_shipped_config_is_checked() {
    let covered: BTreeSet<&str> = [
        "config/demo.toml",
        "config/example-gsp.toml",
        "deploy/compose/gstgate.toml",
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes-redis/configmap-patch.yaml",
    ]
    .into();
    let mut found = BTreeSet::new();
    for dir in ["config", "deploy"] {
        let mut stack = vec![repo().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let is_config = path.extension().is_some_and(|e| e == "toml")
                    || text.lines().any(|l| l.trim() == "gstgate.toml: |");
                if is_config {
                    let rel = path.strip_prefix(repo()).unwrap();
                    found.insert(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    let covered: BTreeSet<String> = covered.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, covered);
}
