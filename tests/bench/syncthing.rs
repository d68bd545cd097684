//! Syncthing as a sync baseline: two instances on loopback, the source's folder send-only and
//! the receiver's receive-only, no discovery, relays or periodic scans; a change is announced
//! with an explicit scan, and the receiver is in sync when the source sees it complete.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::free_tcp_port;

const API_KEY: &str = "aienv-bench";
const FOLDER: &str = "bench";

/// The two instances; stopped on drop.
pub struct Syncthing {
    source: Instance,
    receiver: Instance,
    /// The source's listening port (what it sends from).
    pub port: u16,
    http: awc::Client,
}

struct Instance {
    child: Child,
    gui: String,
    id: String,
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        // `syncthing serve` runs the real instance as a child of a monitor: end the group
        // (continued, in case it was paused).
        for instance in [&mut self.source, &mut self.receiver] {
            // SAFETY: signals to the process group the bench started.
            unsafe {
                libc::kill(-(instance.child.id() as i32), libc::SIGTERM);
                libc::kill(-(instance.child.id() as i32), libc::SIGCONT);
            }
            let _ = instance.child.wait();
        }
    }
}

/// Whether `syncthing` can run here.
pub fn available() -> bool {
    Command::new("syncthing")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn spawn(home: &Path) -> Instance {
    let status = Command::new("syncthing")
        .args(["generate", "--no-default-folder", "--home"])
        .arg(home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "syncthing generate failed");
    let id = Command::new("syncthing")
        .args(["serve", "--device-id", "--home"])
        .arg(home)
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let gui = format!("http://127.0.0.1:{}", free_tcp_port());
    let log = std::fs::File::create(home.join("syncthing.log")).unwrap();
    let child = Command::new("syncthing")
        .process_group(0)
        .args(["serve", "--no-browser", "--no-restart", "--no-upgrade"])
        .arg(format!("--home={}", home.display()))
        .arg(format!("--gui-address={gui}"))
        .arg(format!("--gui-apikey={API_KEY}"))
        .env("STNODEFAULTFOLDER", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Instance { child, gui, id }
}

impl Syncthing {
    /// Starts both, shares `source` (whose top level holds `marker`, the folder marker
    /// Syncthing insists on) into `target`, and waits until the first copy is complete.
    pub async fn start(base: &Path, source: &Path, target: &Path, marker: &str) -> Syncthing {
        let source_instance = spawn(&base.join("syncthing-source"));
        let receiver_instance = spawn(&base.join("syncthing-receiver"));
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(600))
            .finish();
        let port = free_tcp_port();
        let syncthing = Syncthing {
            source: source_instance,
            receiver: receiver_instance,
            port,
            http,
        };
        for instance in [&syncthing.source, &syncthing.receiver] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while syncthing.get(instance, "/rest/system/ping").await.is_none() {
                assert!(Instant::now() < deadline, "syncthing did not start");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let options = |listen: String| {
            json!({
                "listenAddresses": [listen],
                "globalAnnounceEnabled": false,
                "localAnnounceEnabled": false,
                "relaysEnabled": false,
                "natEnabled": false,
                "urAccepted": -1,
                "crashReportingEnabled": false,
                "autoUpgradeIntervalH": 0,
                "reconnectionIntervalS": 1,
            })
        };
        let (source_id, receiver_id) = (syncthing.source.id.clone(), syncthing.receiver.id.clone());
        syncthing
            .send(
                &syncthing.source,
                "PATCH",
                "/rest/config/options",
                options(format!("tcp://127.0.0.1:{port}")),
            )
            .await;
        syncthing
            .send(
                &syncthing.receiver,
                "PATCH",
                "/rest/config/options",
                options(format!("tcp://127.0.0.1:{}", free_tcp_port())),
            )
            .await;
        // The receiver dials the source, so what the source sends leaves from `port`.
        syncthing
            .send(
                &syncthing.source,
                "POST",
                "/rest/config/devices",
                json!({"deviceID": receiver_id, "addresses": ["dynamic"]}),
            )
            .await;
        syncthing
            .send(
                &syncthing.receiver,
                "POST",
                "/rest/config/devices",
                json!({"deviceID": source_id, "addresses": [format!("tcp://127.0.0.1:{port}")]}),
            )
            .await;
        let folder = |path: &Path, kind: &str, peer: &str| {
            json!({
                "id": FOLDER,
                "path": path.display().to_string(),
                "type": kind,
                "markerName": marker,
                "fsWatcherEnabled": false,
                "rescanIntervalS": 0,
                "devices": [{"deviceID": peer}],
            })
        };
        syncthing
            .send(
                &syncthing.source,
                "POST",
                "/rest/config/folders",
                folder(source, "sendonly", &receiver_id),
            )
            .await;
        // A receiving folder needs its marker too, before anything arrives.
        std::fs::create_dir_all(target.join(marker)).unwrap();
        syncthing
            .send(
                &syncthing.receiver,
                "POST",
                "/rest/config/folders",
                folder(target, "receiveonly", &source_id),
            )
            .await;
        syncthing.wait_in_sync(Duration::from_secs(900)).await;
        syncthing
    }

    /// Stops both instances (`SIGSTOP` to their process groups) while the other tools are
    /// measured, so that nothing Syncthing does between its own syncs runs beside them.
    /// Nothing may ask them anything until [`Syncthing::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Continues both instances after [`Syncthing::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        for instance in [&self.source, &self.receiver] {
            // SAFETY: a signal to the process group the bench started.
            unsafe {
                libc::kill(-(instance.child.id() as i32), signal);
            }
        }
    }

    /// Scans the source (a change was made) and waits until the receiver has it; returns the
    /// seconds from the scan to then.
    pub async fn rescan_and_wait(&self) -> f64 {
        let started = Instant::now();
        self.send(
            &self.source,
            "POST",
            &format!("/rest/db/scan?folder={FOLDER}"),
            Value::Null,
        )
        .await;
        self.wait_in_sync(Duration::from_secs(600)).await;
        started.elapsed().as_secs_f64()
    }

    /// Bytes the receiver has received from the source, by Syncthing's own count.
    pub async fn received(&self) -> u64 {
        let connections = self
            .get(&self.receiver, "/rest/system/connections")
            .await
            .unwrap_or_default();
        connections["connections"][&self.source.id]["inBytesTotal"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Until the source sees the receiver complete (which it reports only after pulling what
    /// the last scan found) and the receiver is idle with nothing needed.
    async fn wait_in_sync(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let completion = format!(
            "/rest/db/completion?folder={FOLDER}&device={}",
            self.receiver.id
        );
        let status = format!("/rest/db/status?folder={FOLDER}");
        loop {
            let seen = self
                .get(&self.source, &completion)
                .await
                .unwrap_or_default();
            let global = self.get(&self.source, &status).await.unwrap_or_default();
            let here = self.get(&self.receiver, &status).await.unwrap_or_default();
            if seen["completion"].as_f64() == Some(100.0)
                && seen["needBytes"].as_u64() == Some(0)
                && here["state"] == "idle"
                && here["needBytes"].as_u64() == Some(0)
                && here["globalBytes"] == global["globalBytes"]
                && here["localBytes"] == global["globalBytes"]
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "syncthing did not get in sync: {seen} {here}"
            );
            if here["state"] == "error" {
                let config = self
                    .get(&self.receiver, &format!("/rest/config/folders/{FOLDER}"))
                    .await
                    .unwrap_or_default();
                let path = config["path"].as_str().unwrap_or_default().to_string();
                let listing = std::fs::read_dir(&path)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                panic!("syncthing's receiver stopped: {} (its folder: {config}; {path} holds {listing:?})", here["error"]);
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, instance: &Instance, path: &str) -> Option<Value> {
        let mut response = self
            .http
            .get(format!("{}{path}", instance.gui))
            .insert_header(("X-API-Key", API_KEY))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.body().limit(16 << 20).await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    async fn send(&self, instance: &Instance, method: &str, path: &str, body: Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let request = self
            .http
            .request(method, format!("{}{path}", instance.gui))
            .insert_header(("X-API-Key", API_KEY));
        let mut response = if body.is_null() {
            request.send().await
        } else {
            request.send_json(&body).await
        }
        .unwrap();
        let text = response.body().await.unwrap_or_default();
        assert!(
            response.status().is_success(),
            "syncthing {path}: {} {}",
            response.status(),
            String::from_utf8_lossy(&text)
        );
    }
}
