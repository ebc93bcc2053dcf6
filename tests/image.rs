//! What the container image relies on, tested without the image (base
//! images cannot be pulled here, so it is not built in CI): the
//! Dockerfile's own ENTRYPOINT and CMD, run with its ENV and nothing else
//! in the environment, its paths mapped to a temp dir, start charond and
//! serve the demo the image copies in, on a run-dir volume that is root's
//! style 0777 (as an emptyDir is); its HEALTHCHECK command and the
//! Kubernetes manifests' probe commands pass; its STOPSIGNAL stops charond
//! cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::daemon::{Daemon, PATIENCE};
use crate::util::{bin, free_port, http_get, run, wait_for, TestDir};

const KEY: &str = "system.echo.0.raw";

/// The Dockerfile's final stage, as far as running it goes.
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    health: Vec<String>,
    stop_signal: String,
    copies: Vec<String>,
}

impl Image {
    fn read() -> Image {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
        let text = std::fs::read_to_string(&path).expect("read the Dockerfile");
        let mut img = Image {
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            health: Vec::new(),
            stop_signal: String::new(),
            copies: Vec::new(),
        };
        for line in instructions(&text) {
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            let rest = rest.trim();
            match word.to_ascii_uppercase().as_str() {
                // Each FROM starts a stage: only the last one runs.
                "FROM" => img.copies.clear(),
                "ENTRYPOINT" => img.entrypoint = exec_form(rest),
                "CMD" => img.cmd = exec_form(rest),
                "ENV" => {
                    let (k, v) = rest.split_once('=').expect("ENV KEY=VALUE");
                    img.env.push((k.to_string(), v.to_string()));
                }
                "HEALTHCHECK" => {
                    let (_, cmd) = rest.split_once("CMD ").expect("HEALTHCHECK ... CMD");
                    img.health = exec_form(cmd);
                }
                "STOPSIGNAL" => img.stop_signal = rest.to_string(),
                "COPY" => img.copies.push(rest.to_string()),
                _ => {}
            }
        }
        img
    }
}

/// The instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// `["a", "b"]`: the exec form, the only one the image uses (no shell).
fn exec_form(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not the exec form ({e}): {s}"))
}

/// The image's paths and port, mapped to the test's.
struct Mapping {
    pairs: Vec<(String, String)>,
}

impl Mapping {
    /// The image's config dir as `demo`, its /run/charon volume as a new
    /// dir in `dir`, and its metrics port as `port` on localhost.
    fn of_the_image(dir: &TestDir, demo: &Path, port: u16) -> Mapping {
        // The /run/charon volume, as an emptyDir comes: root's style 0777.
        // charond makes its run dir below it, its own and 0755.
        let volume = dir.mkdir("volume");
        std::fs::set_permissions(&volume, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod the volume");
        Mapping {
            pairs: vec![
                ("/etc/charon".into(), demo.display().to_string()),
                ("/run/charon".into(), volume.display().to_string()),
                ("0.0.0.0:9464".into(), format!("127.0.0.1:{port}")),
            ],
        }
    }

    fn apply(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.pairs {
            s = s.replace(from, to);
        }
        s
    }

    /// `argv` as a command with the image's environment only: PATH is
    /// where the binaries are (the image's /usr/local/bin).
    fn command(&self, argv: &[String], img: &Image) -> Command {
        let argv: Vec<String> = argv.iter().map(|a| self.apply(a)).collect();
        let mut cmd = Command::new(bin(&argv[0]));
        cmd.args(&argv[1..]).env_clear();
        let bin_dir = bin("charond").parent().expect("bin dir").to_path_buf();
        cmd.env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()));
        for (k, v) in &img.env {
            cmd.env(k, self.apply(v));
        }
        cmd
    }
}

#[test]
fn the_image_entrypoint_serves_the_demo_and_passes_its_health_check() {
    let img = Image::read();
    // The config dir the entrypoint names holds the repository's demo.
    assert!(
        img.copies.iter().any(|c| c == "demo/ /etc/charon/"),
        "the image copies demo/ to /etc/charon/: {:?}",
        img.copies
    );
    assert_eq!(img.entrypoint[0], "charond", "charond is PID 1");
    assert_eq!(img.stop_signal, "SIGTERM");
    let dir = TestDir::new();
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo");
    let port = free_port();
    let map = Mapping::of_the_image(&dir, &demo, port);
    let run_dir = map.apply("/run/charon/sockets");
    let run_env = img
        .env
        .iter()
        .find(|(k, _)| k == "CHARON_RUN_DIR")
        .map(|(_, v)| map.apply(v));
    assert_eq!(
        run_env.as_deref(),
        Some(run_dir.as_str()),
        "ENV names the run dir"
    );
    let argv: Vec<String> = img.entrypoint.iter().chain(&img.cmd).cloned().collect();
    let cmd = map.command(&argv, &img);
    let mut d = Daemon::spawn(dir, demo, PathBuf::from(&run_dir), cmd);

    assert_eq!(
        d.client().call(KEY, b"from the image").unwrap(),
        b"from the image"
    );
    wait_for(PATIENCE, "the request in /metrics", || {
        http_get(port, "/metrics").contains("charon_requests_total{key=\"system.echo.0.raw\"} 1")
    });
    the_health_check_and_the_probes_pass(&map, &img);

    d.signal(Signal::SIGTERM);
    // The documented stop timeout (docker run --stop-timeout 30).
    let st = d
        .proc
        .as_mut()
        .expect("charond")
        .wait_timeout(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "a clean stop; log:\n{}", d.log());
}

/// The image's HEALTHCHECK command passes, and so do the Kubernetes probes
/// (deploy/kubernetes/), run the same way: in the charond container with
/// the image's environment.
fn the_health_check_and_the_probes_pass(map: &Mapping, img: &Image) {
    let (st, out, err) = run(map.command(&img.health, img), PATIENCE);
    assert!(
        st.success(),
        "HEALTHCHECK {:?}: {st} {} {}",
        img.health,
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let probes = probe_commands();
    assert!(
        probes.iter().any(|p| p.contains(&"--live".to_string())) && probes.len() >= 2,
        "readiness and liveness commands: {probes:?}"
    );
    for probe in &probes {
        let (st, out, err) = run(map.command(probe, img), PATIENCE);
        assert!(
            st.success(),
            "probe {probe:?}: {st} {} {}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
    }
}

/// The distinct exec probe commands of the manifests in deploy/kubernetes/,
/// written there as JSON arrays (`command: ["charon", "health", ...]`).
fn probe_commands() -> Vec<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut out: Vec<Vec<String>> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read manifest");
            for line in text.lines() {
                if let Some(cmd) = line.trim().strip_prefix("command: ") {
                    let cmd = exec_form(cmd);
                    if !out.contains(&cmd) {
                        out.push(cmd);
                    }
                }
            }
        }
    }
    out
}
